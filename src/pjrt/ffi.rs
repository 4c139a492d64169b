//! Raw C ABI of the PJRT plugin interface (`xla/pjrt/c/pjrt_c_api.h`).
//!
//! Only the structs and functions xlaguard calls are spelled out; every other slot of
//! [`PJRT_Api`] is an opaque function pointer so that offsets stay right. Field order and types
//! follow the header exactly; `tests/abi.rs` compiles the real header and compares every offset.
//! Structs are append-only across minor versions, so a newer plugin sees our (older, smaller)
//! `struct_size` and treats the missing tail as absent.
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    missing_docs
)]

use std::ffi::{c_char, c_int, c_void};

/// Major version of the header these definitions follow.
pub const PJRT_API_MAJOR: i32 = 0;
/// Minor version of the header these definitions follow (the oldest plugin we accept).
pub const PJRT_API_MINOR: i32 = 81;

macro_rules! opaque {
    ($($name:ident),* $(,)?) => {$(
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
        }
    )*};
}
opaque!(
    PJRT_Error,
    PJRT_Extension_Base,
    PJRT_Event,
    PJRT_Client,
    PJRT_Device,
    PJRT_Memory,
    PJRT_Executable,
    PJRT_LoadedExecutable,
    PJRT_Buffer,
    PJRT_SerializedExecutable,
    PJRT_ExecuteContext,
    PJRT_SendCallbackInfo,
    PJRT_RecvCallbackInfo,
);

/// Defines an argument struct: `struct_size` and `extension_start` first, then the fields.
/// `new()` zeroes everything and sets `struct_size`.
macro_rules! args {
    ($($name:ident { $($field:ident : $ty:ty),* $(,)? })*) => {$(
        #[repr(C)]
        #[derive(Debug)]
        pub struct $name {
            pub struct_size: usize,
            pub extension_start: *mut PJRT_Extension_Base,
            $(pub $field: $ty,)*
        }
        impl $name {
            /// All fields zero (null pointers, zero counts), `struct_size` set.
            pub fn new() -> Self {
                // SAFETY: every field is a raw pointer, an integer, a C enum whose zero value is
                // valid, or an `Option` of a function pointer; all-zero is valid for each.
                let mut s: Self = unsafe { std::mem::zeroed() };
                s.struct_size = std::mem::size_of::<Self>();
                s
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
    )*};
}

pub type PJRT_Error_Code = c_int;
pub type PJRT_Buffer_Type = c_int;
pub type PJRT_NamedValue_Type = c_int;
pub type PJRT_HostBufferSemantics = c_int;

pub const PJRT_NamedValue_kString: PJRT_NamedValue_Type = 0;
pub const PJRT_NamedValue_kInt64: PJRT_NamedValue_Type = 1;
pub const PJRT_NamedValue_kInt64List: PJRT_NamedValue_Type = 2;
pub const PJRT_NamedValue_kFloat: PJRT_NamedValue_Type = 3;
pub const PJRT_NamedValue_kBool: PJRT_NamedValue_Type = 4;

pub const PJRT_HostBufferSemantics_kImmutableOnlyDuringCall: PJRT_HostBufferSemantics = 0;
pub const PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes: PJRT_HostBufferSemantics = 1;
pub const PJRT_HostBufferSemantics_kImmutableZeroCopy: PJRT_HostBufferSemantics = 2;

pub const PJRT_Buffer_Type_INVALID: PJRT_Buffer_Type = 0;
pub const PJRT_Buffer_Type_PRED: PJRT_Buffer_Type = 1;
pub const PJRT_Buffer_Type_S8: PJRT_Buffer_Type = 2;
pub const PJRT_Buffer_Type_S16: PJRT_Buffer_Type = 3;
pub const PJRT_Buffer_Type_S32: PJRT_Buffer_Type = 4;
pub const PJRT_Buffer_Type_S64: PJRT_Buffer_Type = 5;
pub const PJRT_Buffer_Type_U8: PJRT_Buffer_Type = 6;
pub const PJRT_Buffer_Type_U16: PJRT_Buffer_Type = 7;
pub const PJRT_Buffer_Type_U32: PJRT_Buffer_Type = 8;
pub const PJRT_Buffer_Type_U64: PJRT_Buffer_Type = 9;
pub const PJRT_Buffer_Type_F16: PJRT_Buffer_Type = 10;
pub const PJRT_Buffer_Type_F32: PJRT_Buffer_Type = 11;
pub const PJRT_Buffer_Type_F64: PJRT_Buffer_Type = 12;
pub const PJRT_Buffer_Type_BF16: PJRT_Buffer_Type = 13;
pub const PJRT_Buffer_Type_C64: PJRT_Buffer_Type = 14;
pub const PJRT_Buffer_Type_C128: PJRT_Buffer_Type = 15;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PJRT_Api_Version {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub major_version: c_int,
    pub minor_version: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union PJRT_NamedValue_Value {
    pub string_value: *const c_char,
    pub int64_value: i64,
    pub int64_array_value: *const i64,
    pub float_value: f32,
    pub bool_value: bool,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PJRT_NamedValue {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub name: *const c_char,
    pub name_size: usize,
    pub type_: PJRT_NamedValue_Type,
    pub value: PJRT_NamedValue_Value,
    pub value_size: usize,
}

#[repr(C)]
#[derive(Debug)]
pub struct PJRT_Program {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub code: *mut c_char,
    pub code_size: usize,
    pub format: *const c_char,
    pub format_size: usize,
}

pub type PJRT_Buffer_MemoryLayout_Type = c_int;
pub const PJRT_Buffer_MemoryLayout_Type_Tiled: PJRT_Buffer_MemoryLayout_Type = 0;
pub const PJRT_Buffer_MemoryLayout_Type_Strides: PJRT_Buffer_MemoryLayout_Type = 1;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PJRT_Buffer_MemoryLayout_Tiled {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub minor_to_major: *const i64,
    pub minor_to_major_size: usize,
    pub tile_dims: *const i64,
    pub tile_dim_sizes: *const usize,
    pub num_tiles: usize,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PJRT_Buffer_MemoryLayout_Strides {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub byte_strides: *const i64,
    pub num_byte_strides: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union PJRT_Buffer_MemoryLayout_Union {
    pub tiled: PJRT_Buffer_MemoryLayout_Tiled,
    pub strides: PJRT_Buffer_MemoryLayout_Strides,
}

impl std::fmt::Debug for PJRT_Buffer_MemoryLayout_Union {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PJRT_Buffer_MemoryLayout_Union")
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PJRT_Buffer_MemoryLayout {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub layout: PJRT_Buffer_MemoryLayout_Union,
    pub type_: PJRT_Buffer_MemoryLayout_Type,
}

pub type PJRT_KeyValueCallback = Option<unsafe extern "C" fn(args: *mut c_void) -> *mut PJRT_Error>;

args! {
    PJRT_Error_Destroy_Args { error: *mut PJRT_Error }
    PJRT_Error_Message_Args { error: *const PJRT_Error, message: *const c_char, message_size: usize }
    PJRT_Error_GetCode_Args { error: *const PJRT_Error, code: PJRT_Error_Code }
    PJRT_Plugin_Initialize_Args {}
    PJRT_Plugin_Attributes_Args { attributes: *const PJRT_NamedValue, num_attributes: usize }
    PJRT_Event_Destroy_Args { event: *mut PJRT_Event }
    PJRT_Event_Await_Args { event: *mut PJRT_Event }
    PJRT_Client_Create_Args {
        create_options: *const PJRT_NamedValue,
        num_options: usize,
        kv_get_callback: PJRT_KeyValueCallback,
        kv_get_user_arg: *mut c_void,
        kv_put_callback: PJRT_KeyValueCallback,
        kv_put_user_arg: *mut c_void,
        client: *mut PJRT_Client,
        kv_try_get_callback: PJRT_KeyValueCallback,
        kv_try_get_user_arg: *mut c_void,
    }
    PJRT_Client_Destroy_Args { client: *mut PJRT_Client }
    PJRT_Client_PlatformName_Args { client: *mut PJRT_Client, platform_name: *const c_char, platform_name_size: usize }
    PJRT_Client_PlatformVersion_Args { client: *mut PJRT_Client, platform_version: *const c_char, platform_version_size: usize }
    PJRT_Client_AddressableDevices_Args {
        client: *mut PJRT_Client,
        addressable_devices: *const *mut PJRT_Device,
        num_addressable_devices: usize,
    }
    PJRT_Client_Compile_Args {
        client: *mut PJRT_Client,
        program: *const PJRT_Program,
        compile_options: *const c_char,
        compile_options_size: usize,
        executable: *mut PJRT_LoadedExecutable,
    }
    PJRT_Client_BufferFromHostBuffer_Args {
        client: *mut PJRT_Client,
        data: *const c_void,
        type_: PJRT_Buffer_Type,
        dims: *const i64,
        num_dims: usize,
        byte_strides: *const i64,
        num_byte_strides: usize,
        host_buffer_semantics: PJRT_HostBufferSemantics,
        device: *mut PJRT_Device,
        memory: *mut PJRT_Memory,
        device_layout: *mut c_void,
        done_with_host_buffer: *mut PJRT_Event,
        buffer: *mut PJRT_Buffer,
    }
    PJRT_Client_CreateViewOfDeviceBuffer_Args {
        client: *mut PJRT_Client,
        device_buffer_ptr: *mut c_void,
        dims: *const i64,
        num_dims: usize,
        element_type: PJRT_Buffer_Type,
        layout: *mut c_void,
        device: *mut PJRT_Device,
        on_delete_callback: Option<unsafe extern "C" fn(device_buffer_ptr: *mut c_void, user_arg: *mut c_void)>,
        on_delete_callback_arg: *mut c_void,
        stream: isize,
        buffer: *mut PJRT_Buffer,
        memory: *mut PJRT_Memory,
    }
    PJRT_Executable_Destroy_Args { executable: *mut PJRT_Executable }
    PJRT_Executable_NumOutputs_Args { executable: *mut PJRT_Executable, num_outputs: usize }
    PJRT_Executable_OptimizedProgram_Args { executable: *mut PJRT_Executable, program: *mut PJRT_Program }
    PJRT_Executable_Serialize_Args {
        executable: *const PJRT_Executable,
        serialized_bytes: *const c_char,
        serialized_bytes_size: usize,
        serialized_executable: *mut PJRT_SerializedExecutable,
        serialized_executable_deleter: Option<unsafe extern "C" fn(exec: *mut PJRT_SerializedExecutable)>,
    }
    PJRT_Executable_OutputElementTypes_Args {
        executable: *mut PJRT_Executable,
        output_types: *mut PJRT_Buffer_Type,
        num_output_types: usize,
    }
    PJRT_Executable_OutputDimensions_Args {
        executable: *mut PJRT_Executable,
        num_outputs: usize,
        dims: *const i64,
        dim_sizes: *const usize,
    }
    PJRT_Executable_Fingerprint_Args {
        executable: *mut PJRT_Executable,
        executable_fingerprint: *const c_char,
        executable_fingerprint_size: usize,
    }
    PJRT_Executable_GetCompiledMemoryStats_Args {
        executable: *mut PJRT_Executable,
        generated_code_size_in_bytes: i64,
        argument_size_in_bytes: i64,
        output_size_in_bytes: i64,
        alias_size_in_bytes: i64,
        temp_size_in_bytes: i64,
        host_generated_code_size_in_bytes: i64,
        host_argument_size_in_bytes: i64,
        host_output_size_in_bytes: i64,
        host_alias_size_in_bytes: i64,
        host_temp_size_in_bytes: i64,
        peak_memory_in_bytes: i64,
    }
    PJRT_LoadedExecutable_Destroy_Args { executable: *mut PJRT_LoadedExecutable }
    PJRT_LoadedExecutable_GetExecutable_Args { loaded_executable: *mut PJRT_LoadedExecutable, executable: *mut PJRT_Executable }
    PJRT_ExecuteOptions {
        send_callbacks: *mut *mut PJRT_SendCallbackInfo,
        recv_callbacks: *mut *mut PJRT_RecvCallbackInfo,
        num_send_ops: usize,
        num_recv_ops: usize,
        launch_id: c_int,
        non_donatable_input_indices: *const i64,
        num_non_donatable_input_indices: usize,
        context: *mut PJRT_ExecuteContext,
        call_location: *const c_char,
        num_tasks: usize,
        task_ids: *mut c_int,
        incarnation_ids: *mut i64,
    }
    PJRT_LoadedExecutable_Execute_Args {
        executable: *mut PJRT_LoadedExecutable,
        options: *mut PJRT_ExecuteOptions,
        argument_lists: *const *const *mut PJRT_Buffer,
        num_devices: usize,
        num_args: usize,
        output_lists: *const *mut *mut PJRT_Buffer,
        device_complete_events: *mut *mut PJRT_Event,
        execute_device: *mut PJRT_Device,
    }
    PJRT_Executable_DeserializeAndLoad_Args {
        client: *mut PJRT_Client,
        serialized_executable: *const c_char,
        serialized_executable_size: usize,
        loaded_executable: *mut PJRT_LoadedExecutable,
        overridden_serialized_compile_options: *const c_char,
        overridden_serialized_compile_options_size: usize,
    }
    PJRT_Buffer_Destroy_Args { buffer: *mut PJRT_Buffer }
    PJRT_Buffer_ElementType_Args { buffer: *mut PJRT_Buffer, type_: PJRT_Buffer_Type }
    PJRT_Buffer_Dimensions_Args { buffer: *mut PJRT_Buffer, dims: *const i64, num_dims: usize }
    PJRT_Buffer_IsOnCpu_Args { buffer: *mut PJRT_Buffer, is_on_cpu: bool }
    PJRT_Buffer_UnsafePointer_Args { buffer: *mut PJRT_Buffer, buffer_pointer: usize }
    PJRT_Buffer_ReadyEvent_Args { buffer: *mut PJRT_Buffer, event: *mut PJRT_Event }
    PJRT_Buffer_OnDeviceSizeInBytes_Args { buffer: *mut PJRT_Buffer, on_device_size_in_bytes: usize }
    PJRT_Buffer_GetMemoryLayout_Args { buffer: *mut PJRT_Buffer, layout: PJRT_Buffer_MemoryLayout }
    PJRT_Event_IsReady_Args { event: *mut PJRT_Event, is_ready: bool }
    PJRT_Buffer_ToHostBuffer_Args {
        src: *mut PJRT_Buffer,
        host_layout: *mut c_void,
        dst: *mut c_void,
        dst_size: usize,
        event: *mut PJRT_Event,
    }
}

impl PJRT_Program {
    /// A program descriptor for `code` in `format` ("mlir" or "hlo"); the pointers borrow both.
    pub fn new(code: &[u8], format: &'static str) -> Self {
        PJRT_Program {
            struct_size: std::mem::size_of::<Self>(),
            extension_start: std::ptr::null_mut(),
            code: code.as_ptr().cast::<c_char>().cast_mut(),
            code_size: code.len(),
            format: format.as_ptr().cast::<c_char>(),
            format_size: format.len(),
        }
    }
}

/// The function table a plugin's `GetPjrtApi` returns (API 0.81 prefix; newer plugins append).
#[repr(C)]
pub struct PJRT_Api {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub pjrt_api_version: PJRT_Api_Version,
    pub PJRT_Error_Destroy: Option<unsafe extern "C" fn(args: *mut PJRT_Error_Destroy_Args) -> ()>,
    pub PJRT_Error_Message: Option<unsafe extern "C" fn(args: *mut PJRT_Error_Message_Args) -> ()>,
    pub PJRT_Error_GetCode:
        Option<unsafe extern "C" fn(args: *mut PJRT_Error_GetCode_Args) -> *mut PJRT_Error>,
    pub PJRT_Plugin_Initialize:
        Option<unsafe extern "C" fn(args: *mut PJRT_Plugin_Initialize_Args) -> *mut PJRT_Error>,
    pub PJRT_Plugin_Attributes:
        Option<unsafe extern "C" fn(args: *mut PJRT_Plugin_Attributes_Args) -> *mut PJRT_Error>,
    pub PJRT_Event_Destroy:
        Option<unsafe extern "C" fn(args: *mut PJRT_Event_Destroy_Args) -> *mut PJRT_Error>,
    pub PJRT_Event_IsReady:
        Option<unsafe extern "C" fn(args: *mut PJRT_Event_IsReady_Args) -> *mut PJRT_Error>,
    pub PJRT_Event_Error: Option<unsafe extern "C" fn()>,
    pub PJRT_Event_Await:
        Option<unsafe extern "C" fn(args: *mut PJRT_Event_Await_Args) -> *mut PJRT_Error>,
    pub PJRT_Event_OnReady: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_Create:
        Option<unsafe extern "C" fn(args: *mut PJRT_Client_Create_Args) -> *mut PJRT_Error>,
    pub PJRT_Client_Destroy:
        Option<unsafe extern "C" fn(args: *mut PJRT_Client_Destroy_Args) -> *mut PJRT_Error>,
    pub PJRT_Client_PlatformName:
        Option<unsafe extern "C" fn(args: *mut PJRT_Client_PlatformName_Args) -> *mut PJRT_Error>,
    pub PJRT_Client_ProcessIndex: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_PlatformVersion: Option<
        unsafe extern "C" fn(args: *mut PJRT_Client_PlatformVersion_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Client_Devices: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_AddressableDevices: Option<
        unsafe extern "C" fn(args: *mut PJRT_Client_AddressableDevices_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Client_LookupDevice: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_LookupAddressableDevice: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_AddressableMemories: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_Compile:
        Option<unsafe extern "C" fn(args: *mut PJRT_Client_Compile_Args) -> *mut PJRT_Error>,
    pub PJRT_Client_DefaultDeviceAssignment: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_BufferFromHostBuffer: Option<
        unsafe extern "C" fn(args: *mut PJRT_Client_BufferFromHostBuffer_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_DeviceDescription_Id: Option<unsafe extern "C" fn()>,
    pub PJRT_DeviceDescription_ProcessIndex: Option<unsafe extern "C" fn()>,
    pub PJRT_DeviceDescription_Attributes: Option<unsafe extern "C" fn()>,
    pub PJRT_DeviceDescription_Kind: Option<unsafe extern "C" fn()>,
    pub PJRT_DeviceDescription_DebugString: Option<unsafe extern "C" fn()>,
    pub PJRT_DeviceDescription_ToString: Option<unsafe extern "C" fn()>,
    pub PJRT_Device_GetDescription: Option<unsafe extern "C" fn()>,
    pub PJRT_Device_IsAddressable: Option<unsafe extern "C" fn()>,
    pub PJRT_Device_LocalHardwareId: Option<unsafe extern "C" fn()>,
    pub PJRT_Device_AddressableMemories: Option<unsafe extern "C" fn()>,
    pub PJRT_Device_DefaultMemory: Option<unsafe extern "C" fn()>,
    pub PJRT_Device_MemoryStats: Option<unsafe extern "C" fn()>,
    pub PJRT_Memory_Id: Option<unsafe extern "C" fn()>,
    pub PJRT_Memory_Kind: Option<unsafe extern "C" fn()>,
    pub PJRT_Memory_DebugString: Option<unsafe extern "C" fn()>,
    pub PJRT_Memory_ToString: Option<unsafe extern "C" fn()>,
    pub PJRT_Memory_AddressableByDevices: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_Destroy:
        Option<unsafe extern "C" fn(args: *mut PJRT_Executable_Destroy_Args) -> *mut PJRT_Error>,
    pub PJRT_Executable_Name: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_NumReplicas: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_NumPartitions: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_NumOutputs:
        Option<unsafe extern "C" fn(args: *mut PJRT_Executable_NumOutputs_Args) -> *mut PJRT_Error>,
    pub PJRT_Executable_SizeOfGeneratedCodeInBytes: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_GetCostAnalysis: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_OutputMemoryKinds: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_OptimizedProgram: Option<
        unsafe extern "C" fn(args: *mut PJRT_Executable_OptimizedProgram_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Executable_Serialize:
        Option<unsafe extern "C" fn(args: *mut PJRT_Executable_Serialize_Args) -> *mut PJRT_Error>,
    pub PJRT_LoadedExecutable_Destroy: Option<
        unsafe extern "C" fn(args: *mut PJRT_LoadedExecutable_Destroy_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_LoadedExecutable_GetExecutable: Option<
        unsafe extern "C" fn(
            args: *mut PJRT_LoadedExecutable_GetExecutable_Args,
        ) -> *mut PJRT_Error,
    >,
    pub PJRT_LoadedExecutable_AddressableDevices: Option<unsafe extern "C" fn()>,
    pub PJRT_LoadedExecutable_Delete: Option<unsafe extern "C" fn()>,
    pub PJRT_LoadedExecutable_IsDeleted: Option<unsafe extern "C" fn()>,
    pub PJRT_LoadedExecutable_Execute: Option<
        unsafe extern "C" fn(args: *mut PJRT_LoadedExecutable_Execute_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Executable_DeserializeAndLoad: Option<
        unsafe extern "C" fn(args: *mut PJRT_Executable_DeserializeAndLoad_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_LoadedExecutable_Fingerprint: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_Destroy:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_Destroy_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_ElementType:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_ElementType_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_Dimensions:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_Dimensions_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_UnpaddedDimensions: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_DynamicDimensionIndices: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_GetMemoryLayout: Option<
        unsafe extern "C" fn(args: *mut PJRT_Buffer_GetMemoryLayout_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Buffer_OnDeviceSizeInBytes: Option<
        unsafe extern "C" fn(args: *mut PJRT_Buffer_OnDeviceSizeInBytes_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Buffer_Device: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_Memory: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_Delete: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_IsDeleted: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_CopyToDevice: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_ToHostBuffer:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_ToHostBuffer_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_IsOnCpu:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_IsOnCpu_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_ReadyEvent:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_ReadyEvent_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_UnsafePointer:
        Option<unsafe extern "C" fn(args: *mut PJRT_Buffer_UnsafePointer_Args) -> *mut PJRT_Error>,
    pub PJRT_Buffer_IncreaseExternalReferenceCount: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_DecreaseExternalReferenceCount: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_OpaqueDeviceMemoryDataPointer: Option<unsafe extern "C" fn()>,
    pub PJRT_CopyToDeviceStream_Destroy: Option<unsafe extern "C" fn()>,
    pub PJRT_CopyToDeviceStream_AddChunk: Option<unsafe extern "C" fn()>,
    pub PJRT_CopyToDeviceStream_TotalBytes: Option<unsafe extern "C" fn()>,
    pub PJRT_CopyToDeviceStream_GranuleSize: Option<unsafe extern "C" fn()>,
    pub PJRT_CopyToDeviceStream_CurrentBytes: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_Create: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_Destroy: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_PlatformName: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_PlatformVersion: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_GetDeviceDescriptions: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_Serialize: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_Attributes: Option<unsafe extern "C" fn()>,
    pub PJRT_Compile: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_OutputElementTypes: Option<
        unsafe extern "C" fn(args: *mut PJRT_Executable_OutputElementTypes_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Executable_OutputDimensions: Option<
        unsafe extern "C" fn(args: *mut PJRT_Executable_OutputDimensions_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Buffer_CopyToMemory: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_CreateViewOfDeviceBuffer: Option<
        unsafe extern "C" fn(
            args: *mut PJRT_Client_CreateViewOfDeviceBuffer_Args,
        ) -> *mut PJRT_Error,
    >,
    pub PJRT_Executable_Fingerprint: Option<
        unsafe extern "C" fn(args: *mut PJRT_Executable_Fingerprint_Args) -> *mut PJRT_Error,
    >,
    pub PJRT_Client_TopologyDescription: Option<unsafe extern "C" fn()>,
    pub PJRT_Executable_GetCompiledMemoryStats: Option<
        unsafe extern "C" fn(
            args: *mut PJRT_Executable_GetCompiledMemoryStats_Args,
        ) -> *mut PJRT_Error,
    >,
    pub PJRT_Memory_Kind_Id: Option<unsafe extern "C" fn()>,
    pub PJRT_ExecuteContext_Create: Option<unsafe extern "C" fn()>,
    pub PJRT_ExecuteContext_Destroy: Option<unsafe extern "C" fn()>,
    pub PJRT_Buffer_CopyRawToHost: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_Destroy: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_TransferData: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_CreateBuffersForAsyncHostToDevice: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_RetrieveBuffer: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_Device: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_BufferCount: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_BufferSize: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_SetBufferError: Option<unsafe extern "C" fn()>,
    pub PJRT_AsyncHostToDeviceTransferManager_AddMetadata: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_DmaMap: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_DmaUnmap: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_CreateUninitializedBuffer: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_UpdateGlobalProcessInfo: Option<unsafe extern "C" fn()>,
    pub PJRT_TopologyDescription_Deserialize: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_CreateAliasBuffer: Option<unsafe extern "C" fn()>,
    pub PJRT_Client_FulfillAliasBuffer: Option<unsafe extern "C" fn()>,
    pub PJRT_LoadedExecutable_GetDeviceAssignment: Option<unsafe extern "C" fn()>,
}

/// Signature of the plugin's one exported symbol.
pub type GetPjrtApiFn = unsafe extern "C" fn() -> *const PJRT_Api;

/// `PJRT_Extension_Type_FFI` in the `PJRT_Extension_Type` enum of `pjrt_c_api.h`.
pub const PJRT_Extension_Type_FFI: c_int = 5;

/// `PJRT_Extension_Base` with its fields: every extension struct starts with it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PJRT_Extension_Base_Fields {
    pub struct_size: usize,
    pub type_: c_int,
    pub next: *mut PJRT_Extension_Base,
}

/// `PJRT_FFI_Register_Handler_Args` (`xla/pjrt/c/pjrt_c_api_ffi_extension.h`) as the XLA of
/// jaxlib 0.11.2 has it: no `extension_start`, and no `api_version` any more (older headers had
/// one before `handler`): only XLA FFI handlers are registered. Read off the plugin's
/// `register_handler`, which takes `handler` at 0x18, the platform at 0x20/0x28, `traits` at
/// 0x30 and checks `struct_size >= 0x34`.
#[repr(C)]
#[derive(Debug)]
pub struct PJRT_FFI_Register_Handler_Args {
    pub struct_size: usize,
    pub target_name: *const c_char,
    pub target_name_size: usize,
    pub handler: *mut c_void,
    pub platform_name: *const c_char,
    pub platform_name_size: usize,
    /// `PJRT_FFI_Handler_TraitsBits`.
    pub traits: c_int,
}

/// `PJRT_FFI_Extension`: the base, then three function pointers. Only `register_handler` is
/// called; the others are opaque.
#[repr(C)]
pub struct PJRT_FFI_Extension {
    pub base: PJRT_Extension_Base_Fields,
    pub type_id_register: Option<unsafe extern "C" fn()>,
    pub user_data_add: Option<unsafe extern "C" fn()>,
    pub register_handler:
        Option<unsafe extern "C" fn(args: *mut PJRT_FFI_Register_Handler_Args) -> *mut PJRT_Error>,
}

#[cfg(test)]
mod ffi_extension_layout {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn register_handler_args_match_the_plugin() {
        assert_eq!(offset_of!(PJRT_FFI_Register_Handler_Args, handler), 0x18);
        assert_eq!(
            offset_of!(PJRT_FFI_Register_Handler_Args, platform_name),
            0x20
        );
        assert_eq!(
            offset_of!(PJRT_FFI_Register_Handler_Args, platform_name_size),
            0x28
        );
        assert_eq!(offset_of!(PJRT_FFI_Register_Handler_Args, traits), 0x30);
        assert_eq!(offset_of!(PJRT_FFI_Extension, register_handler), 0x28);
    }
}
