//! ABI check: our `#[repr(C)]` structs against the real `pjrt_c_api.h`.
//!
//! Compiles a small C program with the header that `scripts/fetch-plugin.sh` puts in
//! `third_party/pjrt-header/` (OpenXLA's, API 0.81: the oldest minor we accept), prints
//! `offsetof` of every field we define and each struct's `PJRT_STRUCT_SIZE`, and compares with
//! `offset_of!` / `size_of` on the Rust side. ABI drift fails here, not in a user's process.

use std::mem::{offset_of, size_of};
use std::path::Path;
use std::process::Command;

use xlaguard::pjrt::ffi::*;

macro_rules! fields {
    ($(($s:ident, $f:ident, $c:literal),)*) => {
        vec![$((stringify!($s), $c, offset_of!($s, $f)),)*]
    };
}

macro_rules! sizes {
    ($($s:ident),*) => {
        vec![$((stringify!($s), size_of::<$s>()),)*]
    };
}

#[test]
fn layouts_match_pjrt_c_api_h() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header_dir = root.join("third_party/pjrt-header");
    assert!(
        header_dir.join("pjrt_c_api.h").is_file(),
        "missing third_party/pjrt-header/pjrt_c_api.h: run scripts/fetch-plugin.sh"
    );
    let fields = fields!(
        (PJRT_Error_Destroy_Args, struct_size, "struct_size"),
        (PJRT_Error_Destroy_Args, extension_start, "extension_start"),
        (PJRT_Error_Destroy_Args, error, "error"),
        (PJRT_Error_Message_Args, struct_size, "struct_size"),
        (PJRT_Error_Message_Args, extension_start, "extension_start"),
        (PJRT_Error_Message_Args, error, "error"),
        (PJRT_Error_Message_Args, message, "message"),
        (PJRT_Error_Message_Args, message_size, "message_size"),
        (PJRT_Error_GetCode_Args, struct_size, "struct_size"),
        (PJRT_Error_GetCode_Args, extension_start, "extension_start"),
        (PJRT_Error_GetCode_Args, error, "error"),
        (PJRT_Error_GetCode_Args, code, "code"),
        (PJRT_Plugin_Initialize_Args, struct_size, "struct_size"),
        (
            PJRT_Plugin_Initialize_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Plugin_Attributes_Args, struct_size, "struct_size"),
        (
            PJRT_Plugin_Attributes_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Plugin_Attributes_Args, attributes, "attributes"),
        (
            PJRT_Plugin_Attributes_Args,
            num_attributes,
            "num_attributes"
        ),
        (PJRT_Event_Destroy_Args, struct_size, "struct_size"),
        (PJRT_Event_Destroy_Args, extension_start, "extension_start"),
        (PJRT_Event_Destroy_Args, event, "event"),
        (PJRT_Event_Await_Args, struct_size, "struct_size"),
        (PJRT_Event_Await_Args, extension_start, "extension_start"),
        (PJRT_Event_Await_Args, event, "event"),
        (PJRT_Client_Create_Args, struct_size, "struct_size"),
        (PJRT_Client_Create_Args, extension_start, "extension_start"),
        (PJRT_Client_Create_Args, create_options, "create_options"),
        (PJRT_Client_Create_Args, num_options, "num_options"),
        (PJRT_Client_Create_Args, kv_get_callback, "kv_get_callback"),
        (PJRT_Client_Create_Args, kv_get_user_arg, "kv_get_user_arg"),
        (PJRT_Client_Create_Args, kv_put_callback, "kv_put_callback"),
        (PJRT_Client_Create_Args, kv_put_user_arg, "kv_put_user_arg"),
        (PJRT_Client_Create_Args, client, "client"),
        (
            PJRT_Client_Create_Args,
            kv_try_get_callback,
            "kv_try_get_callback"
        ),
        (
            PJRT_Client_Create_Args,
            kv_try_get_user_arg,
            "kv_try_get_user_arg"
        ),
        (PJRT_Client_Destroy_Args, struct_size, "struct_size"),
        (PJRT_Client_Destroy_Args, extension_start, "extension_start"),
        (PJRT_Client_Destroy_Args, client, "client"),
        (PJRT_Client_PlatformName_Args, struct_size, "struct_size"),
        (
            PJRT_Client_PlatformName_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Client_PlatformName_Args, client, "client"),
        (
            PJRT_Client_PlatformName_Args,
            platform_name,
            "platform_name"
        ),
        (
            PJRT_Client_PlatformName_Args,
            platform_name_size,
            "platform_name_size"
        ),
        (PJRT_Client_PlatformVersion_Args, struct_size, "struct_size"),
        (
            PJRT_Client_PlatformVersion_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Client_PlatformVersion_Args, client, "client"),
        (
            PJRT_Client_PlatformVersion_Args,
            platform_version,
            "platform_version"
        ),
        (
            PJRT_Client_PlatformVersion_Args,
            platform_version_size,
            "platform_version_size"
        ),
        (
            PJRT_Client_AddressableDevices_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Client_AddressableDevices_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Client_AddressableDevices_Args, client, "client"),
        (
            PJRT_Client_AddressableDevices_Args,
            addressable_devices,
            "addressable_devices"
        ),
        (
            PJRT_Client_AddressableDevices_Args,
            num_addressable_devices,
            "num_addressable_devices"
        ),
        (PJRT_Client_Compile_Args, struct_size, "struct_size"),
        (PJRT_Client_Compile_Args, extension_start, "extension_start"),
        (PJRT_Client_Compile_Args, client, "client"),
        (PJRT_Client_Compile_Args, program, "program"),
        (PJRT_Client_Compile_Args, compile_options, "compile_options"),
        (
            PJRT_Client_Compile_Args,
            compile_options_size,
            "compile_options_size"
        ),
        (PJRT_Client_Compile_Args, executable, "executable"),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Client_BufferFromHostBuffer_Args, client, "client"),
        (PJRT_Client_BufferFromHostBuffer_Args, data, "data"),
        (PJRT_Client_BufferFromHostBuffer_Args, type_, "type"),
        (PJRT_Client_BufferFromHostBuffer_Args, dims, "dims"),
        (PJRT_Client_BufferFromHostBuffer_Args, num_dims, "num_dims"),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            byte_strides,
            "byte_strides"
        ),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            num_byte_strides,
            "num_byte_strides"
        ),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            host_buffer_semantics,
            "host_buffer_semantics"
        ),
        (PJRT_Client_BufferFromHostBuffer_Args, device, "device"),
        (PJRT_Client_BufferFromHostBuffer_Args, memory, "memory"),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            device_layout,
            "device_layout"
        ),
        (
            PJRT_Client_BufferFromHostBuffer_Args,
            done_with_host_buffer,
            "done_with_host_buffer"
        ),
        (PJRT_Client_BufferFromHostBuffer_Args, buffer, "buffer"),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, client, "client"),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            device_buffer_ptr,
            "device_buffer_ptr"
        ),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, dims, "dims"),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            num_dims,
            "num_dims"
        ),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            element_type,
            "element_type"
        ),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, layout, "layout"),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, device, "device"),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            on_delete_callback,
            "on_delete_callback"
        ),
        (
            PJRT_Client_CreateViewOfDeviceBuffer_Args,
            on_delete_callback_arg,
            "on_delete_callback_arg"
        ),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, stream, "stream"),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, buffer, "buffer"),
        (PJRT_Client_CreateViewOfDeviceBuffer_Args, memory, "memory"),
        (PJRT_Executable_Destroy_Args, struct_size, "struct_size"),
        (
            PJRT_Executable_Destroy_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Executable_Destroy_Args, executable, "executable"),
        (PJRT_Executable_NumOutputs_Args, struct_size, "struct_size"),
        (
            PJRT_Executable_NumOutputs_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Executable_NumOutputs_Args, executable, "executable"),
        (PJRT_Executable_NumOutputs_Args, num_outputs, "num_outputs"),
        (
            PJRT_Executable_OptimizedProgram_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Executable_OptimizedProgram_Args,
            extension_start,
            "extension_start"
        ),
        (
            PJRT_Executable_OptimizedProgram_Args,
            executable,
            "executable"
        ),
        (PJRT_Executable_OptimizedProgram_Args, program, "program"),
        (PJRT_Executable_Serialize_Args, struct_size, "struct_size"),
        (
            PJRT_Executable_Serialize_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Executable_Serialize_Args, executable, "executable"),
        (
            PJRT_Executable_Serialize_Args,
            serialized_bytes,
            "serialized_bytes"
        ),
        (
            PJRT_Executable_Serialize_Args,
            serialized_bytes_size,
            "serialized_bytes_size"
        ),
        (
            PJRT_Executable_Serialize_Args,
            serialized_executable,
            "serialized_executable"
        ),
        (
            PJRT_Executable_Serialize_Args,
            serialized_executable_deleter,
            "serialized_executable_deleter"
        ),
        (
            PJRT_Executable_OutputElementTypes_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Executable_OutputElementTypes_Args,
            extension_start,
            "extension_start"
        ),
        (
            PJRT_Executable_OutputElementTypes_Args,
            executable,
            "executable"
        ),
        (
            PJRT_Executable_OutputElementTypes_Args,
            output_types,
            "output_types"
        ),
        (
            PJRT_Executable_OutputElementTypes_Args,
            num_output_types,
            "num_output_types"
        ),
        (
            PJRT_Executable_OutputDimensions_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Executable_OutputDimensions_Args,
            extension_start,
            "extension_start"
        ),
        (
            PJRT_Executable_OutputDimensions_Args,
            executable,
            "executable"
        ),
        (
            PJRT_Executable_OutputDimensions_Args,
            num_outputs,
            "num_outputs"
        ),
        (PJRT_Executable_OutputDimensions_Args, dims, "dims"),
        (
            PJRT_Executable_OutputDimensions_Args,
            dim_sizes,
            "dim_sizes"
        ),
        (PJRT_Executable_Fingerprint_Args, struct_size, "struct_size"),
        (
            PJRT_Executable_Fingerprint_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Executable_Fingerprint_Args, executable, "executable"),
        (
            PJRT_Executable_Fingerprint_Args,
            executable_fingerprint,
            "executable_fingerprint"
        ),
        (
            PJRT_Executable_Fingerprint_Args,
            executable_fingerprint_size,
            "executable_fingerprint_size"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            extension_start,
            "extension_start"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            executable,
            "executable"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            generated_code_size_in_bytes,
            "generated_code_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            argument_size_in_bytes,
            "argument_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            output_size_in_bytes,
            "output_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            alias_size_in_bytes,
            "alias_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            temp_size_in_bytes,
            "temp_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            host_generated_code_size_in_bytes,
            "host_generated_code_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            host_argument_size_in_bytes,
            "host_argument_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            host_output_size_in_bytes,
            "host_output_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            host_alias_size_in_bytes,
            "host_alias_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            host_temp_size_in_bytes,
            "host_temp_size_in_bytes"
        ),
        (
            PJRT_Executable_GetCompiledMemoryStats_Args,
            peak_memory_in_bytes,
            "peak_memory_in_bytes"
        ),
        (
            PJRT_LoadedExecutable_Destroy_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_LoadedExecutable_Destroy_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_LoadedExecutable_Destroy_Args, executable, "executable"),
        (
            PJRT_LoadedExecutable_GetExecutable_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_LoadedExecutable_GetExecutable_Args,
            extension_start,
            "extension_start"
        ),
        (
            PJRT_LoadedExecutable_GetExecutable_Args,
            loaded_executable,
            "loaded_executable"
        ),
        (
            PJRT_LoadedExecutable_GetExecutable_Args,
            executable,
            "executable"
        ),
        (PJRT_ExecuteOptions, struct_size, "struct_size"),
        (PJRT_ExecuteOptions, extension_start, "extension_start"),
        (PJRT_ExecuteOptions, send_callbacks, "send_callbacks"),
        (PJRT_ExecuteOptions, recv_callbacks, "recv_callbacks"),
        (PJRT_ExecuteOptions, num_send_ops, "num_send_ops"),
        (PJRT_ExecuteOptions, num_recv_ops, "num_recv_ops"),
        (PJRT_ExecuteOptions, launch_id, "launch_id"),
        (
            PJRT_ExecuteOptions,
            non_donatable_input_indices,
            "non_donatable_input_indices"
        ),
        (
            PJRT_ExecuteOptions,
            num_non_donatable_input_indices,
            "num_non_donatable_input_indices"
        ),
        (PJRT_ExecuteOptions, context, "context"),
        (PJRT_ExecuteOptions, call_location, "call_location"),
        (PJRT_ExecuteOptions, num_tasks, "num_tasks"),
        (PJRT_ExecuteOptions, task_ids, "task_ids"),
        (PJRT_ExecuteOptions, incarnation_ids, "incarnation_ids"),
        (
            PJRT_LoadedExecutable_Execute_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_LoadedExecutable_Execute_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_LoadedExecutable_Execute_Args, executable, "executable"),
        (PJRT_LoadedExecutable_Execute_Args, options, "options"),
        (
            PJRT_LoadedExecutable_Execute_Args,
            argument_lists,
            "argument_lists"
        ),
        (
            PJRT_LoadedExecutable_Execute_Args,
            num_devices,
            "num_devices"
        ),
        (PJRT_LoadedExecutable_Execute_Args, num_args, "num_args"),
        (
            PJRT_LoadedExecutable_Execute_Args,
            output_lists,
            "output_lists"
        ),
        (
            PJRT_LoadedExecutable_Execute_Args,
            device_complete_events,
            "device_complete_events"
        ),
        (
            PJRT_LoadedExecutable_Execute_Args,
            execute_device,
            "execute_device"
        ),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            struct_size,
            "struct_size"
        ),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Executable_DeserializeAndLoad_Args, client, "client"),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            serialized_executable,
            "serialized_executable"
        ),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            serialized_executable_size,
            "serialized_executable_size"
        ),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            loaded_executable,
            "loaded_executable"
        ),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            overridden_serialized_compile_options,
            "overridden_serialized_compile_options"
        ),
        (
            PJRT_Executable_DeserializeAndLoad_Args,
            overridden_serialized_compile_options_size,
            "overridden_serialized_compile_options_size"
        ),
        (PJRT_Buffer_Destroy_Args, struct_size, "struct_size"),
        (PJRT_Buffer_Destroy_Args, extension_start, "extension_start"),
        (PJRT_Buffer_Destroy_Args, buffer, "buffer"),
        (PJRT_Buffer_ElementType_Args, struct_size, "struct_size"),
        (
            PJRT_Buffer_ElementType_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Buffer_ElementType_Args, buffer, "buffer"),
        (PJRT_Buffer_ElementType_Args, type_, "type"),
        (PJRT_Buffer_Dimensions_Args, struct_size, "struct_size"),
        (
            PJRT_Buffer_Dimensions_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Buffer_Dimensions_Args, buffer, "buffer"),
        (PJRT_Buffer_Dimensions_Args, dims, "dims"),
        (PJRT_Buffer_Dimensions_Args, num_dims, "num_dims"),
        (PJRT_Buffer_ToHostBuffer_Args, struct_size, "struct_size"),
        (
            PJRT_Buffer_ToHostBuffer_Args,
            extension_start,
            "extension_start"
        ),
        (PJRT_Buffer_ToHostBuffer_Args, src, "src"),
        (PJRT_Buffer_ToHostBuffer_Args, host_layout, "host_layout"),
        (PJRT_Buffer_ToHostBuffer_Args, dst, "dst"),
        (PJRT_Buffer_ToHostBuffer_Args, dst_size, "dst_size"),
        (PJRT_Buffer_ToHostBuffer_Args, event, "event"),
        (PJRT_Event_IsReady_Args, event, "event"),
        (PJRT_Event_IsReady_Args, is_ready, "is_ready"),
        (PJRT_Buffer_IsOnCpu_Args, buffer, "buffer"),
        (PJRT_Buffer_IsOnCpu_Args, is_on_cpu, "is_on_cpu"),
        (PJRT_Buffer_ReadyEvent_Args, buffer, "buffer"),
        (PJRT_Buffer_ReadyEvent_Args, event, "event"),
        (PJRT_Buffer_UnsafePointer_Args, buffer, "buffer"),
        (
            PJRT_Buffer_UnsafePointer_Args,
            buffer_pointer,
            "buffer_pointer"
        ),
        (PJRT_Buffer_GetMemoryLayout_Args, buffer, "buffer"),
        (PJRT_Buffer_GetMemoryLayout_Args, layout, "layout"),
        (PJRT_Buffer_MemoryLayout, tiled, "tiled"),
        (PJRT_Buffer_MemoryLayout, type_, "type"),
        (
            PJRT_Buffer_MemoryLayout_Tiled,
            minor_to_major,
            "minor_to_major"
        ),
        (
            PJRT_Buffer_MemoryLayout_Tiled,
            minor_to_major_size,
            "minor_to_major_size"
        ),
        (PJRT_Buffer_MemoryLayout_Tiled, tile_dims, "tile_dims"),
        (
            PJRT_Buffer_MemoryLayout_Tiled,
            tile_dim_sizes,
            "tile_dim_sizes"
        ),
        (PJRT_Buffer_MemoryLayout_Tiled, num_tiles, "num_tiles"),
        (PJRT_Program, struct_size, "struct_size"),
        (PJRT_Program, extension_start, "extension_start"),
        (PJRT_Program, code, "code"),
        (PJRT_Program, code_size, "code_size"),
        (PJRT_Program, format, "format"),
        (PJRT_Program, format_size, "format_size"),
        (PJRT_NamedValue, struct_size, "struct_size"),
        (PJRT_NamedValue, extension_start, "extension_start"),
        (PJRT_NamedValue, name, "name"),
        (PJRT_NamedValue, name_size, "name_size"),
        (PJRT_NamedValue, type_, "type"),
        (PJRT_NamedValue, value, "int64_value"),
        (PJRT_NamedValue, value_size, "value_size"),
        (PJRT_Api_Version, struct_size, "struct_size"),
        (PJRT_Api_Version, extension_start, "extension_start"),
        (PJRT_Api_Version, major_version, "major_version"),
        (PJRT_Api_Version, minor_version, "minor_version"),
        (PJRT_Api, struct_size, "struct_size"),
        (PJRT_Api, extension_start, "extension_start"),
        (PJRT_Api, pjrt_api_version, "pjrt_api_version"),
        (PJRT_Api, PJRT_Error_Destroy, "PJRT_Error_Destroy"),
        (PJRT_Api, PJRT_Error_Message, "PJRT_Error_Message"),
        (PJRT_Api, PJRT_Error_GetCode, "PJRT_Error_GetCode"),
        (PJRT_Api, PJRT_Plugin_Initialize, "PJRT_Plugin_Initialize"),
        (PJRT_Api, PJRT_Plugin_Attributes, "PJRT_Plugin_Attributes"),
        (PJRT_Api, PJRT_Event_Destroy, "PJRT_Event_Destroy"),
        (PJRT_Api, PJRT_Event_IsReady, "PJRT_Event_IsReady"),
        (PJRT_Api, PJRT_Event_Error, "PJRT_Event_Error"),
        (PJRT_Api, PJRT_Event_Await, "PJRT_Event_Await"),
        (PJRT_Api, PJRT_Event_OnReady, "PJRT_Event_OnReady"),
        (PJRT_Api, PJRT_Client_Create, "PJRT_Client_Create"),
        (PJRT_Api, PJRT_Client_Destroy, "PJRT_Client_Destroy"),
        (
            PJRT_Api,
            PJRT_Client_PlatformName,
            "PJRT_Client_PlatformName"
        ),
        (
            PJRT_Api,
            PJRT_Client_ProcessIndex,
            "PJRT_Client_ProcessIndex"
        ),
        (
            PJRT_Api,
            PJRT_Client_PlatformVersion,
            "PJRT_Client_PlatformVersion"
        ),
        (PJRT_Api, PJRT_Client_Devices, "PJRT_Client_Devices"),
        (
            PJRT_Api,
            PJRT_Client_AddressableDevices,
            "PJRT_Client_AddressableDevices"
        ),
        (
            PJRT_Api,
            PJRT_Client_LookupDevice,
            "PJRT_Client_LookupDevice"
        ),
        (
            PJRT_Api,
            PJRT_Client_LookupAddressableDevice,
            "PJRT_Client_LookupAddressableDevice"
        ),
        (
            PJRT_Api,
            PJRT_Client_AddressableMemories,
            "PJRT_Client_AddressableMemories"
        ),
        (PJRT_Api, PJRT_Client_Compile, "PJRT_Client_Compile"),
        (
            PJRT_Api,
            PJRT_Client_DefaultDeviceAssignment,
            "PJRT_Client_DefaultDeviceAssignment"
        ),
        (
            PJRT_Api,
            PJRT_Client_BufferFromHostBuffer,
            "PJRT_Client_BufferFromHostBuffer"
        ),
        (
            PJRT_Api,
            PJRT_DeviceDescription_Id,
            "PJRT_DeviceDescription_Id"
        ),
        (
            PJRT_Api,
            PJRT_DeviceDescription_ProcessIndex,
            "PJRT_DeviceDescription_ProcessIndex"
        ),
        (
            PJRT_Api,
            PJRT_DeviceDescription_Attributes,
            "PJRT_DeviceDescription_Attributes"
        ),
        (
            PJRT_Api,
            PJRT_DeviceDescription_Kind,
            "PJRT_DeviceDescription_Kind"
        ),
        (
            PJRT_Api,
            PJRT_DeviceDescription_DebugString,
            "PJRT_DeviceDescription_DebugString"
        ),
        (
            PJRT_Api,
            PJRT_DeviceDescription_ToString,
            "PJRT_DeviceDescription_ToString"
        ),
        (
            PJRT_Api,
            PJRT_Device_GetDescription,
            "PJRT_Device_GetDescription"
        ),
        (
            PJRT_Api,
            PJRT_Device_IsAddressable,
            "PJRT_Device_IsAddressable"
        ),
        (
            PJRT_Api,
            PJRT_Device_LocalHardwareId,
            "PJRT_Device_LocalHardwareId"
        ),
        (
            PJRT_Api,
            PJRT_Device_AddressableMemories,
            "PJRT_Device_AddressableMemories"
        ),
        (
            PJRT_Api,
            PJRT_Device_DefaultMemory,
            "PJRT_Device_DefaultMemory"
        ),
        (PJRT_Api, PJRT_Device_MemoryStats, "PJRT_Device_MemoryStats"),
        (PJRT_Api, PJRT_Memory_Id, "PJRT_Memory_Id"),
        (PJRT_Api, PJRT_Memory_Kind, "PJRT_Memory_Kind"),
        (PJRT_Api, PJRT_Memory_DebugString, "PJRT_Memory_DebugString"),
        (PJRT_Api, PJRT_Memory_ToString, "PJRT_Memory_ToString"),
        (
            PJRT_Api,
            PJRT_Memory_AddressableByDevices,
            "PJRT_Memory_AddressableByDevices"
        ),
        (PJRT_Api, PJRT_Executable_Destroy, "PJRT_Executable_Destroy"),
        (PJRT_Api, PJRT_Executable_Name, "PJRT_Executable_Name"),
        (
            PJRT_Api,
            PJRT_Executable_NumReplicas,
            "PJRT_Executable_NumReplicas"
        ),
        (
            PJRT_Api,
            PJRT_Executable_NumPartitions,
            "PJRT_Executable_NumPartitions"
        ),
        (
            PJRT_Api,
            PJRT_Executable_NumOutputs,
            "PJRT_Executable_NumOutputs"
        ),
        (
            PJRT_Api,
            PJRT_Executable_SizeOfGeneratedCodeInBytes,
            "PJRT_Executable_SizeOfGeneratedCodeInBytes"
        ),
        (
            PJRT_Api,
            PJRT_Executable_GetCostAnalysis,
            "PJRT_Executable_GetCostAnalysis"
        ),
        (
            PJRT_Api,
            PJRT_Executable_OutputMemoryKinds,
            "PJRT_Executable_OutputMemoryKinds"
        ),
        (
            PJRT_Api,
            PJRT_Executable_OptimizedProgram,
            "PJRT_Executable_OptimizedProgram"
        ),
        (
            PJRT_Api,
            PJRT_Executable_Serialize,
            "PJRT_Executable_Serialize"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_Destroy,
            "PJRT_LoadedExecutable_Destroy"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_GetExecutable,
            "PJRT_LoadedExecutable_GetExecutable"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_AddressableDevices,
            "PJRT_LoadedExecutable_AddressableDevices"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_Delete,
            "PJRT_LoadedExecutable_Delete"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_IsDeleted,
            "PJRT_LoadedExecutable_IsDeleted"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_Execute,
            "PJRT_LoadedExecutable_Execute"
        ),
        (
            PJRT_Api,
            PJRT_Executable_DeserializeAndLoad,
            "PJRT_Executable_DeserializeAndLoad"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_Fingerprint,
            "PJRT_LoadedExecutable_Fingerprint"
        ),
        (PJRT_Api, PJRT_Buffer_Destroy, "PJRT_Buffer_Destroy"),
        (PJRT_Api, PJRT_Buffer_ElementType, "PJRT_Buffer_ElementType"),
        (PJRT_Api, PJRT_Buffer_Dimensions, "PJRT_Buffer_Dimensions"),
        (
            PJRT_Api,
            PJRT_Buffer_UnpaddedDimensions,
            "PJRT_Buffer_UnpaddedDimensions"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_DynamicDimensionIndices,
            "PJRT_Buffer_DynamicDimensionIndices"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_GetMemoryLayout,
            "PJRT_Buffer_GetMemoryLayout"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_OnDeviceSizeInBytes,
            "PJRT_Buffer_OnDeviceSizeInBytes"
        ),
        (PJRT_Api, PJRT_Buffer_Device, "PJRT_Buffer_Device"),
        (PJRT_Api, PJRT_Buffer_Memory, "PJRT_Buffer_Memory"),
        (PJRT_Api, PJRT_Buffer_Delete, "PJRT_Buffer_Delete"),
        (PJRT_Api, PJRT_Buffer_IsDeleted, "PJRT_Buffer_IsDeleted"),
        (
            PJRT_Api,
            PJRT_Buffer_CopyToDevice,
            "PJRT_Buffer_CopyToDevice"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_ToHostBuffer,
            "PJRT_Buffer_ToHostBuffer"
        ),
        (PJRT_Api, PJRT_Buffer_IsOnCpu, "PJRT_Buffer_IsOnCpu"),
        (PJRT_Api, PJRT_Buffer_ReadyEvent, "PJRT_Buffer_ReadyEvent"),
        (
            PJRT_Api,
            PJRT_Buffer_UnsafePointer,
            "PJRT_Buffer_UnsafePointer"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_IncreaseExternalReferenceCount,
            "PJRT_Buffer_IncreaseExternalReferenceCount"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_DecreaseExternalReferenceCount,
            "PJRT_Buffer_DecreaseExternalReferenceCount"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_OpaqueDeviceMemoryDataPointer,
            "PJRT_Buffer_OpaqueDeviceMemoryDataPointer"
        ),
        (
            PJRT_Api,
            PJRT_CopyToDeviceStream_Destroy,
            "PJRT_CopyToDeviceStream_Destroy"
        ),
        (
            PJRT_Api,
            PJRT_CopyToDeviceStream_AddChunk,
            "PJRT_CopyToDeviceStream_AddChunk"
        ),
        (
            PJRT_Api,
            PJRT_CopyToDeviceStream_TotalBytes,
            "PJRT_CopyToDeviceStream_TotalBytes"
        ),
        (
            PJRT_Api,
            PJRT_CopyToDeviceStream_GranuleSize,
            "PJRT_CopyToDeviceStream_GranuleSize"
        ),
        (
            PJRT_Api,
            PJRT_CopyToDeviceStream_CurrentBytes,
            "PJRT_CopyToDeviceStream_CurrentBytes"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_Create,
            "PJRT_TopologyDescription_Create"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_Destroy,
            "PJRT_TopologyDescription_Destroy"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_PlatformName,
            "PJRT_TopologyDescription_PlatformName"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_PlatformVersion,
            "PJRT_TopologyDescription_PlatformVersion"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_GetDeviceDescriptions,
            "PJRT_TopologyDescription_GetDeviceDescriptions"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_Serialize,
            "PJRT_TopologyDescription_Serialize"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_Attributes,
            "PJRT_TopologyDescription_Attributes"
        ),
        (PJRT_Api, PJRT_Compile, "PJRT_Compile"),
        (
            PJRT_Api,
            PJRT_Executable_OutputElementTypes,
            "PJRT_Executable_OutputElementTypes"
        ),
        (
            PJRT_Api,
            PJRT_Executable_OutputDimensions,
            "PJRT_Executable_OutputDimensions"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_CopyToMemory,
            "PJRT_Buffer_CopyToMemory"
        ),
        (
            PJRT_Api,
            PJRT_Client_CreateViewOfDeviceBuffer,
            "PJRT_Client_CreateViewOfDeviceBuffer"
        ),
        (
            PJRT_Api,
            PJRT_Executable_Fingerprint,
            "PJRT_Executable_Fingerprint"
        ),
        (
            PJRT_Api,
            PJRT_Client_TopologyDescription,
            "PJRT_Client_TopologyDescription"
        ),
        (
            PJRT_Api,
            PJRT_Executable_GetCompiledMemoryStats,
            "PJRT_Executable_GetCompiledMemoryStats"
        ),
        (PJRT_Api, PJRT_Memory_Kind_Id, "PJRT_Memory_Kind_Id"),
        (
            PJRT_Api,
            PJRT_ExecuteContext_Create,
            "PJRT_ExecuteContext_Create"
        ),
        (
            PJRT_Api,
            PJRT_ExecuteContext_Destroy,
            "PJRT_ExecuteContext_Destroy"
        ),
        (
            PJRT_Api,
            PJRT_Buffer_CopyRawToHost,
            "PJRT_Buffer_CopyRawToHost"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_Destroy,
            "PJRT_AsyncHostToDeviceTransferManager_Destroy"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_TransferData,
            "PJRT_AsyncHostToDeviceTransferManager_TransferData"
        ),
        (
            PJRT_Api,
            PJRT_Client_CreateBuffersForAsyncHostToDevice,
            "PJRT_Client_CreateBuffersForAsyncHostToDevice"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_RetrieveBuffer,
            "PJRT_AsyncHostToDeviceTransferManager_RetrieveBuffer"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_Device,
            "PJRT_AsyncHostToDeviceTransferManager_Device"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_BufferCount,
            "PJRT_AsyncHostToDeviceTransferManager_BufferCount"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_BufferSize,
            "PJRT_AsyncHostToDeviceTransferManager_BufferSize"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_SetBufferError,
            "PJRT_AsyncHostToDeviceTransferManager_SetBufferError"
        ),
        (
            PJRT_Api,
            PJRT_AsyncHostToDeviceTransferManager_AddMetadata,
            "PJRT_AsyncHostToDeviceTransferManager_AddMetadata"
        ),
        (PJRT_Api, PJRT_Client_DmaMap, "PJRT_Client_DmaMap"),
        (PJRT_Api, PJRT_Client_DmaUnmap, "PJRT_Client_DmaUnmap"),
        (
            PJRT_Api,
            PJRT_Client_CreateUninitializedBuffer,
            "PJRT_Client_CreateUninitializedBuffer"
        ),
        (
            PJRT_Api,
            PJRT_Client_UpdateGlobalProcessInfo,
            "PJRT_Client_UpdateGlobalProcessInfo"
        ),
        (
            PJRT_Api,
            PJRT_TopologyDescription_Deserialize,
            "PJRT_TopologyDescription_Deserialize"
        ),
        (
            PJRT_Api,
            PJRT_Client_CreateAliasBuffer,
            "PJRT_Client_CreateAliasBuffer"
        ),
        (
            PJRT_Api,
            PJRT_Client_FulfillAliasBuffer,
            "PJRT_Client_FulfillAliasBuffer"
        ),
        (
            PJRT_Api,
            PJRT_LoadedExecutable_GetDeviceAssignment,
            "PJRT_LoadedExecutable_GetDeviceAssignment"
        ),
    );
    let sizes = sizes!(
        PJRT_Api_Version,
        PJRT_Buffer_Destroy_Args,
        PJRT_Buffer_Dimensions_Args,
        PJRT_Buffer_ElementType_Args,
        PJRT_Buffer_ToHostBuffer_Args,
        PJRT_Buffer_GetMemoryLayout_Args,
        PJRT_Buffer_IsOnCpu_Args,
        PJRT_Buffer_MemoryLayout,
        PJRT_Buffer_MemoryLayout_Tiled,
        PJRT_Buffer_ReadyEvent_Args,
        PJRT_Buffer_UnsafePointer_Args,
        PJRT_Event_IsReady_Args,
        PJRT_Client_AddressableDevices_Args,
        PJRT_Client_BufferFromHostBuffer_Args,
        PJRT_Client_Compile_Args,
        PJRT_Client_CreateViewOfDeviceBuffer_Args,
        PJRT_Client_Create_Args,
        PJRT_Client_Destroy_Args,
        PJRT_Client_PlatformName_Args,
        PJRT_Client_PlatformVersion_Args,
        PJRT_Error_Destroy_Args,
        PJRT_Error_GetCode_Args,
        PJRT_Error_Message_Args,
        PJRT_Event_Await_Args,
        PJRT_Event_Destroy_Args,
        PJRT_Executable_DeserializeAndLoad_Args,
        PJRT_Executable_Destroy_Args,
        PJRT_Executable_Fingerprint_Args,
        PJRT_Executable_GetCompiledMemoryStats_Args,
        PJRT_Executable_NumOutputs_Args,
        PJRT_Executable_OptimizedProgram_Args,
        PJRT_Executable_OutputDimensions_Args,
        PJRT_Executable_OutputElementTypes_Args,
        PJRT_Executable_Serialize_Args,
        PJRT_ExecuteOptions,
        PJRT_LoadedExecutable_Destroy_Args,
        PJRT_LoadedExecutable_Execute_Args,
        PJRT_LoadedExecutable_GetExecutable_Args,
        PJRT_NamedValue,
        PJRT_Plugin_Attributes_Args,
        PJRT_Plugin_Initialize_Args,
        PJRT_Program
    );
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"pjrt_c_api.h\"\nint main(void) {\n",
    );
    for (s, f, _) in &fields {
        c += &format!("  printf(\"%s.%s %zu\\n\", \"{s}\", \"{f}\", offsetof({s}, {f}));\n");
    }
    for (s, _) in &sizes {
        if *s == "PJRT_ExecuteOptions"
            || *s == "PJRT_NamedValue"
            || s.starts_with("PJRT_Buffer_MemoryLayout")
            || *s == "PJRT_Program"
            || *s == "PJRT_Api_Version"
            || s.ends_with("_Args")
        {
            c += &format!("  printf(\"%s %zu\\n\", \"{s}\", (size_t){s}_STRUCT_SIZE);\n");
        }
    }
    c += "  return 0;\n}\n";
    let dir = std::env::temp_dir().join(format!("xlaguard-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("abi.c");
    let exe = dir.join("abi");
    std::fs::write(&src, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-std=gnu11", "-w", "-I"])
        .arg(&header_dir)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("run the C compiler");
    assert!(
        st.success(),
        "compiling the ABI probe against pjrt_c_api.h failed"
    );
    let out = Command::new(&exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut c_values = std::collections::HashMap::new();
    for line in text.lines() {
        let (k, v) = line.rsplit_once(' ').unwrap();
        c_values.insert(k.to_string(), v.parse::<usize>().unwrap());
    }
    let mut mismatches = Vec::new();
    for (s, f, rust) in &fields {
        let c = c_values[&format!("{s}.{f}")];
        if c != *rust {
            mismatches.push(format!("{s}.{f}: C offset {c}, Rust {rust}"));
        }
    }
    let mut checked_sizes = 0;
    for (s, rust) in &sizes {
        if let Some(&c) = c_values.get(*s) {
            checked_sizes += 1;
            // Our struct_size is size_of (>= PJRT_STRUCT_SIZE, which excludes tail padding) and
            // never more than one alignment unit past it.
            if *rust < c || *rust >= c + 8 {
                mismatches.push(format!("{s}: C STRUCT_SIZE {c}, Rust size {rust}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    assert!(
        fields.len() > 300 && checked_sizes > 30,
        "{} fields, {} sizes checked",
        fields.len(),
        checked_sizes
    );
}
