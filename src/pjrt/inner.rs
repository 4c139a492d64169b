//! The state behind a [`super::Client`], shared (by `Arc`) with every buffer and executable
//! it makes, so the client outlives them.

use std::sync::Arc;

use super::api::{api_fn, lossy, Api};
use super::ffi;
use super::PjrtError;

/// A live `PJRT_Client` and what was queried of it at creation.
pub(crate) struct ClientInner {
    pub(crate) api: Arc<Api>,
    pub(crate) raw: *mut ffi::PJRT_Client,
    pub(crate) devices: Vec<*mut ffi::PJRT_Device>,
    pub(crate) platform: String,
    pub(crate) platform_version: String,
}

// SAFETY: PJRT clients are thread-safe by contract (JAX shares one across threads); the device
// pointers are owned by the client and immutable.
unsafe impl Send for ClientInner {}
// SAFETY: as above.
unsafe impl Sync for ClientInner {}

impl ClientInner {
    pub(super) fn query_devices(&self) -> Result<Vec<*mut ffi::PJRT_Device>, PjrtError> {
        let f = api_fn!(self.api, PJRT_Client_AddressableDevices)?;
        let mut args = ffi::PJRT_Client_AddressableDevices_Args::new();
        args.client = self.raw;
        // SAFETY: live client, valid args.
        let err = unsafe { f(&mut args) };
        self.api.check(err, "PJRT_Client_AddressableDevices")?;
        if args.addressable_devices.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the plugin returns `num_addressable_devices` device pointers owned by the client.
        Ok(unsafe {
            std::slice::from_raw_parts(args.addressable_devices, args.num_addressable_devices)
        }
        .to_vec())
    }

    pub(super) fn query_platform(&self) -> Result<String, PjrtError> {
        let f = api_fn!(self.api, PJRT_Client_PlatformName)?;
        let mut args = ffi::PJRT_Client_PlatformName_Args::new();
        args.client = self.raw;
        // SAFETY: live client, valid args; the name is owned by the client and copied now.
        let err = unsafe { f(&mut args) };
        self.api.check(err, "PJRT_Client_PlatformName")?;
        // SAFETY: pointer and size from the plugin.
        Ok(unsafe { lossy(args.platform_name, args.platform_name_size) })
    }

    pub(super) fn query_platform_version(&self) -> Result<String, PjrtError> {
        let f = api_fn!(self.api, PJRT_Client_PlatformVersion)?;
        let mut args = ffi::PJRT_Client_PlatformVersion_Args::new();
        args.client = self.raw;
        // SAFETY: live client, valid args.
        let err = unsafe { f(&mut args) };
        self.api.check(err, "PJRT_Client_PlatformVersion")?;
        // SAFETY: pointer and size from the plugin.
        Ok(unsafe { lossy(args.platform_version, args.platform_version_size) })
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if let Ok(f) = api_fn!(self.api, PJRT_Client_Destroy) {
            let mut args = ffi::PJRT_Client_Destroy_Args::new();
            args.client = self.raw;
            // SAFETY: we own the client; destroyed once. Executables and buffers hold an
            // `Arc<Client>`, so none outlives it.
            let err = unsafe { f(&mut args) };
            let _ = self.api.check(err, "PJRT_Client_Destroy");
        }
    }
}
