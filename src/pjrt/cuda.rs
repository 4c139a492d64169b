//! On-device value checks for inputs that already live on an NVIDIA GPU (feature `cuda`).
//!
//! One fused pass over the buffer (NVRTC-compiled at first use, via cudarc) counts NaN, +Inf,
//! -Inf and out-of-range values, finds the first index of each, and the min and max of the
//! finite values; only those few bytes come back to the host. bf16 and f16 are checked in their
//! own width (bit patterns), f32 with vector loads; int32 (token ids) with integer bounds.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use crate::signature::DType;

/// CUDA C source of the scan kernels.
const KERNEL: &str = r#"
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
struct Stats {
  u64 nan, posinf, neginf, below, above;
  u64 first_nan, first_inf, first_below, first_above;
  u32 min_key, max_key;
  u64 finite;
};
__device__ __forceinline__ u32 fkey(float f) {
  u32 u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ u32 ikey(int v) { return ((u32)v) ^ 0x80000000u; }
// Per-thread accumulator. The common case (a vector of finite, in-range values) only updates
// fmin/fmax (or imin/imax) and `finite`; everything else takes the per-element slow path.
struct Acc {
  u64 nan, posinf, neginf, below, above, finite;
  u64 first_nan, first_inf, first_below, first_above;
  float fmin, fmax;
  int imin, imax;
};
__device__ __forceinline__ void acc_init(Acc& a) {
  a.nan = a.posinf = a.neginf = a.below = a.above = a.finite = 0;
  a.first_nan = a.first_inf = a.first_below = a.first_above = ~0ull;
  a.fmin = __int_as_float(0x7f800000); a.fmax = -__int_as_float(0x7f800000);
  a.imin = 0x7fffffff; a.imax = -0x7fffffff - 1;
}
__device__ __forceinline__ void range_f(Acc& a, float v, u64 i, float lo, float hi, int has_lo, int has_hi) {
  if (has_lo && v < lo) { a.below++; if (i < a.first_below) a.first_below = i; }
  if (has_hi && v > hi) { a.above++; if (i < a.first_above) a.first_above = i; }
}
// One float element by class: 0 finite, 1 NaN, 2 +Inf, 3 -Inf. `stats`: also count it as
// finite and fold it into min/max (false when the fast path already did).
__device__ __forceinline__ void slow_f(Acc& a, float v, int kind, u64 i, float lo, float hi, int has_lo, int has_hi, bool stats) {
  if (kind == 1) { a.nan++; if (i < a.first_nan) a.first_nan = i; return; }
  if (kind == 2) { a.posinf++; if (i < a.first_inf) a.first_inf = i; if (has_hi) { a.above++; if (i < a.first_above) a.first_above = i; } return; }
  if (kind == 3) { a.neginf++; if (i < a.first_inf) a.first_inf = i; if (has_lo) { a.below++; if (i < a.first_below) a.first_below = i; } return; }
  if (stats) { a.finite++; a.fmin = fminf(a.fmin, v); a.fmax = fmaxf(a.fmax, v); }
  range_f(a, v, i, lo, hi, has_lo, has_hi);
}
__device__ __forceinline__ int kind32(u32 b) {
  u32 m = b & 0x7fffffffu;
  return m > 0x7f800000u ? 1 : (m == 0x7f800000u ? ((b >> 31) ? 3 : 2) : 0);
}
__device__ __forceinline__ int kind_bf16(u32 h) {
  u32 m = h & 0x7fffu;
  return m > 0x7f80u ? 1 : (m == 0x7f80u ? ((h >> 15) ? 3 : 2) : 0);
}
__device__ __forceinline__ int kind_f16(u32 h) {
  u32 m = h & 0x7fffu;
  return m > 0x7c00u ? 1 : (m == 0x7c00u ? ((h >> 15) ? 3 : 2) : 0);
}
__device__ __forceinline__ float bf16f(u32 h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16f(u32 h) {
  float f; unsigned short x = (unsigned short)h;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
  return f;
}
__device__ void acc_flush(Acc& a, Stats* s, bool is_int) {
  for (int o = 16; o > 0; o >>= 1) {
    a.nan += __shfl_down_sync(0xffffffffu, a.nan, o);
    a.posinf += __shfl_down_sync(0xffffffffu, a.posinf, o);
    a.neginf += __shfl_down_sync(0xffffffffu, a.neginf, o);
    a.below += __shfl_down_sync(0xffffffffu, a.below, o);
    a.above += __shfl_down_sync(0xffffffffu, a.above, o);
    a.finite += __shfl_down_sync(0xffffffffu, a.finite, o);
    a.first_nan = min(a.first_nan, __shfl_down_sync(0xffffffffu, a.first_nan, o));
    a.first_inf = min(a.first_inf, __shfl_down_sync(0xffffffffu, a.first_inf, o));
    a.first_below = min(a.first_below, __shfl_down_sync(0xffffffffu, a.first_below, o));
    a.first_above = min(a.first_above, __shfl_down_sync(0xffffffffu, a.first_above, o));
    a.fmin = fminf(a.fmin, __shfl_down_sync(0xffffffffu, a.fmin, o));
    a.fmax = fmaxf(a.fmax, __shfl_down_sync(0xffffffffu, a.fmax, o));
    a.imin = min(a.imin, __shfl_down_sync(0xffffffffu, a.imin, o));
    a.imax = max(a.imax, __shfl_down_sync(0xffffffffu, a.imax, o));
  }
  if ((threadIdx.x & 31) == 0) {
    if (a.nan) atomicAdd(&s->nan, a.nan);
    if (a.posinf) atomicAdd(&s->posinf, a.posinf);
    if (a.neginf) atomicAdd(&s->neginf, a.neginf);
    if (a.below) atomicAdd(&s->below, a.below);
    if (a.above) atomicAdd(&s->above, a.above);
    if (a.first_nan != ~0ull) atomicMin(&s->first_nan, a.first_nan);
    if (a.first_inf != ~0ull) atomicMin(&s->first_inf, a.first_inf);
    if (a.first_below != ~0ull) atomicMin(&s->first_below, a.first_below);
    if (a.first_above != ~0ull) atomicMin(&s->first_above, a.first_above);
    if (a.finite) {
      atomicAdd(&s->finite, a.finite);
      atomicMin(&s->min_key, is_int ? ikey(a.imin) : fkey(a.fmin));
      atomicMax(&s->max_key, is_int ? ikey(a.imax) : fkey(a.fmax));
    }
  }
}
extern "C" __global__ void init_stats(Stats* s) {
  s->nan = s->posinf = s->neginf = s->below = s->above = s->finite = 0;
  s->first_nan = s->first_inf = s->first_below = s->first_above = ~0ull;
  s->min_key = 0xffffffffu; s->max_key = 0;
}
extern "C" __global__ void scan_f32(const u32* x, u64 n, float lo, float hi, int has_lo, int has_hi, Stats* s) {
  Acc a; acc_init(a);
  u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
  u64 nv = ((((u64)x) & 15) == 0) ? n / 4 : 0;
  const uint4* xv = (const uint4*)x;
  for (u64 j = tid; j < nv; j += stride) {
    uint4 v = __ldg(xv + j);
    u32 w[4] = {v.x, v.y, v.z, v.w};
    bool special = false;
    for (int k = 0; k < 4; k++) special |= (w[k] & 0x7f800000u) == 0x7f800000u;
    if (!special) {
      float f[4];
      bool out = false;
      for (int k = 0; k < 4; k++) {
        f[k] = __uint_as_float(w[k]);
        a.fmin = fminf(a.fmin, f[k]); a.fmax = fmaxf(a.fmax, f[k]);
        out |= (has_lo && f[k] < lo) | (has_hi && f[k] > hi);
      }
      a.finite += 4;
      if (out) for (int k = 0; k < 4; k++) range_f(a, f[k], 4*j + k, lo, hi, has_lo, has_hi);
    } else {
      for (int k = 0; k < 4; k++) slow_f(a, __uint_as_float(w[k]), kind32(w[k]), 4*j + k, lo, hi, has_lo, has_hi, true);
    }
  }
  for (u64 i = 4*nv + tid; i < n; i += stride) { u32 b = __ldg(x + i); slow_f(a, __uint_as_float(b), kind32(b), i, lo, hi, has_lo, has_hi, true); }
  acc_flush(a, s, false);
}
// 8 halves per 16-byte load. EXP: the exponent mask of one half (0x7f80 bf16, 0x7c00 f16).
#define HALF_KERNEL(NAME, EXP, TOF, KIND) \
extern "C" __global__ void NAME(const u16* x, u64 n, float lo, float hi, int has_lo, int has_hi, Stats* s) { \
  Acc a; acc_init(a); \
  u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x; \
  u64 nv = ((((u64)x) & 15) == 0) ? n / 8 : 0; \
  const uint4* xv = (const uint4*)x; \
  const u32 e2 = (EXP) | ((u32)(EXP) << 16); \
  for (u64 j = tid; j < nv; j += stride) { \
    uint4 v = __ldg(xv + j); \
    u32 w[4] = {v.x, v.y, v.z, v.w}; \
    bool special = false; \
    for (int k = 0; k < 4; k++) { u32 t = w[k] & e2; special |= ((t & 0xffffu) == (EXP)) | ((t >> 16) == (EXP)); } \
    if (!special) { \
      float f[8]; bool out = false; \
      for (int k = 0; k < 4; k++) { f[2*k] = TOF(w[k] & 0xffffu); f[2*k+1] = TOF(w[k] >> 16); } \
      for (int k = 0; k < 8; k++) { \
        a.fmin = fminf(a.fmin, f[k]); a.fmax = fmaxf(a.fmax, f[k]); \
        out |= (has_lo && f[k] < lo) | (has_hi && f[k] > hi); \
      } \
      a.finite += 8; \
      if (out) for (int k = 0; k < 8; k++) range_f(a, f[k], 8*j + k, lo, hi, has_lo, has_hi); \
    } else { \
      for (int k = 0; k < 8; k++) { \
        u32 h = (k & 1) ? (w[k/2] >> 16) : (w[k/2] & 0xffffu); \
        int kind = KIND(h); \
        slow_f(a, kind ? 0.0f : TOF(h), kind, 8*j + k, lo, hi, has_lo, has_hi, true); \
      } \
    } \
  } \
  for (u64 i = 8*nv + tid; i < n; i += stride) { \
    u32 h = __ldg(x + i); int kind = KIND(h); \
    slow_f(a, kind ? 0.0f : TOF(h), kind, i, lo, hi, has_lo, has_hi, true); \
  } \
  acc_flush(a, s, false); \
}
HALF_KERNEL(scan_bf16, 0x7f80u, bf16f, kind_bf16)
HALF_KERNEL(scan_f16, 0x7c00u, f16f, kind_f16)
__device__ __forceinline__ void range_i(Acc& a, int v, u64 i, long long lo, long long hi, int has_lo, int has_hi) {
  if (has_lo && (long long)v < lo) { a.below++; if (i < a.first_below) a.first_below = i; }
  if (has_hi && (long long)v > hi) { a.above++; if (i < a.first_above) a.first_above = i; }
}
extern "C" __global__ void scan_i32(const int* x, u64 n, long long lo, long long hi, int has_lo, int has_hi, Stats* s) {
  Acc a; acc_init(a);
  u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
  u64 nv = ((((u64)x) & 15) == 0) ? n / 4 : 0;
  const int4* xv = (const int4*)x;
  for (u64 j = tid; j < nv; j += stride) {
    int4 v = __ldg(xv + j);
    int w[4] = {v.x, v.y, v.z, v.w};
    bool out = false;
    for (int k = 0; k < 4; k++) {
      a.imin = min(a.imin, w[k]); a.imax = max(a.imax, w[k]);
      out |= (has_lo && (long long)w[k] < lo) | (has_hi && (long long)w[k] > hi);
    }
    a.finite += 4;
    if (out) for (int k = 0; k < 4; k++) range_i(a, w[k], 4*j + k, lo, hi, has_lo, has_hi);
  }
  for (u64 i = 4*nv + tid; i < n; i += stride) {
    int v = __ldg(x + i);
    a.finite++; a.imin = min(a.imin, v); a.imax = max(a.imax, v);
    range_i(a, v, i, lo, hi, has_lo, has_hi);
  }
  acc_flush(a, s, true);
}
"#;

/// The raw statistics struct the kernel fills (layout shared with the CUDA `Stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawStats {
    nan: u64,
    posinf: u64,
    neginf: u64,
    below: u64,
    above: u64,
    first_nan: u64,
    first_inf: u64,
    first_below: u64,
    first_above: u64,
    min_key: u32,
    max_key: u32,
    finite: u64,
}

// SAFETY: plain-old-data, `repr(C)`, every bit pattern valid.
unsafe impl cudarc::driver::DeviceRepr for RawStats {}
// SAFETY: all-zero is a valid RawStats.
unsafe impl cudarc::driver::ValidAsZeroBits for RawStats {}

/// Inclusive bounds to count values against.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bounds {
    /// Values below this are counted (`below`).
    pub min: Option<f64>,
    /// Values above this are counted (`above`).
    pub max: Option<f64>,
}

/// What one pass over a device buffer found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceStats {
    /// Elements scanned.
    pub len: u64,
    /// NaN count.
    pub nan: u64,
    /// +Inf count.
    pub pos_inf: u64,
    /// -Inf count.
    pub neg_inf: u64,
    /// Values below `Bounds::min` (including -Inf).
    pub below: u64,
    /// Values above `Bounds::max` (including +Inf).
    pub above: u64,
    /// First NaN, flat index.
    pub first_nan: Option<u64>,
    /// First ±Inf, flat index.
    pub first_inf: Option<u64>,
    /// First value below the minimum.
    pub first_below: Option<u64>,
    /// First value above the maximum.
    pub first_above: Option<u64>,
    /// Smallest finite value (None if there is none).
    pub min: Option<f64>,
    /// Largest finite value.
    pub max: Option<f64>,
}

/// A CUDA-side failure: no driver, no NVRTC, a kernel that did not compile or launch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("CUDA: {0}")]
pub struct CudaError(pub String);

fn err(e: impl std::fmt::Display) -> CudaError {
    CudaError(e.to_string())
}

/// Library files cudarc will look for; checked up front because cudarc panics when a library
/// is missing.
fn check_libraries() -> Result<(), CudaError> {
    let try_open = |names: &[&str]| -> bool {
        names.iter().any(|n| {
            // SAFETY: loading the NVIDIA driver / NVRTC library by soname to see that it exists
            // (it is kept loaded by the dynamic loader's refcount only for this call).
            unsafe { libloading::Library::new(n) }.is_ok()
        })
    };
    if !try_open(&["libcuda.so.1", "libcuda.so"]) {
        return Err(CudaError(
            "the NVIDIA driver library libcuda.so.1 is not loadable (no driver installed?)".into(),
        ));
    }
    if !try_open(&["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]) {
        return Err(CudaError(
            "NVRTC (libnvrtc.so.13 or .12) is not loadable: install the nvidia-cuda-nvrtc wheel or load the CUDA plugin first (it preloads the NVIDIA wheels)".into(),
        ));
    }
    Ok(())
}

/// Runs the scan kernels on one GPU. Create once, reuse: the kernels are compiled at creation.
pub struct DeviceScanner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    f32: CudaFunction,
    bf16: CudaFunction,
    f16: CudaFunction,
    i32: CudaFunction,
    init: CudaFunction,
    blocks: u32,
}

impl std::fmt::Debug for DeviceScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceScanner")
            .field("blocks", &self.blocks)
            .finish()
    }
}

/// PTX of the kernels, compiled once per process.
fn ptx() -> Result<cudarc::nvrtc::Ptx, CudaError> {
    static SRC: OnceLock<Result<String, CudaError>> = OnceLock::new();
    let src = SRC.get_or_init(|| {
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec!["--std=c++14".into()],
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(KERNEL, opts)
            .map(|p| p.to_src())
            .map_err(err)
    });
    src.clone().map(cudarc::nvrtc::Ptx::from_src)
}

/// Compiles the kernels to PTX (NVRTC runs on the CPU; no GPU needed) and returns the PTX size.
///
/// # Errors
/// [`CudaError`] when NVRTC is missing or the kernel source does not compile.
pub fn compile_check() -> Result<usize, CudaError> {
    Ok(ptx()?.to_src().len())
}

impl DeviceScanner {
    /// Compiles the kernels for GPU `ordinal` (the CUDA driver's primary context, which the
    /// PJRT CUDA plugin shares).
    ///
    /// # Errors
    /// [`CudaError`] when the driver or NVRTC is missing or the kernels fail to build.
    pub fn new(ordinal: usize) -> Result<DeviceScanner, CudaError> {
        check_libraries()?;
        let ctx = CudaContext::new(ordinal).map_err(err)?;
        // The CUDA plugin runs in the same primary context. cudarc releases its reference when
        // the last Arc drops; if that happened before the plugin's client is destroyed, the
        // context would be torn down under it (seen: a segfault at exit). Keep one reference
        // for the life of the process.
        std::mem::forget(Arc::clone(&ctx));
        let stream = ctx.new_stream().map_err(err)?;
        let module = ctx.load_module(ptx()?).map_err(err)?;
        let load = |n: &str| module.load_function(n).map_err(err);
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(err)?;
        Ok(DeviceScanner {
            f32: load("scan_f32")?,
            bf16: load("scan_bf16")?,
            f16: load("scan_f16")?,
            i32: load("scan_i32")?,
            init: load("init_stats")?,
            blocks: u32::try_from(sms.max(1)).unwrap_or(1).saturating_mul(8),
            ctx,
            stream,
        })
    }

    /// The context (for allocating buffers on the same GPU).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream the scans run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Scans `len` elements of `dtype` at `data` (a device slice of bytes viewed as that
    /// dtype) and returns the statistics. Waits for earlier writes to `data` first.
    ///
    /// # Errors
    /// [`CudaError`] for an unsupported dtype (float32, bfloat16, float16, int32 are), a
    /// slice too short for `len`, or a failed launch.
    pub fn scan<T: cudarc::driver::DeviceRepr>(
        &self,
        data: &CudaSlice<T>,
        dtype: DType,
        len: u64,
        bounds: Bounds,
    ) -> Result<DeviceStats, CudaError> {
        let need = len
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| CudaError("length overflows".into()))?;
        let have = (data.len() as u64).saturating_mul(std::mem::size_of::<T>() as u64);
        if have < need {
            return Err(CudaError(format!(
                "device slice holds {have} bytes, {need} needed"
            )));
        }
        let mut stats = self.stream.alloc_zeros::<RawStats>(1).map_err(err)?;
        {
            let mut b = self.stream.launch_builder(&self.init);
            b.arg(&mut stats);
            // SAFETY: `init_stats(Stats*)` writes the one RawStats `stats` holds.
            unsafe {
                b.launch(LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (1, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map_err(err)?;
        }
        let cfg = LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (has_lo, has_hi) = (
            i32::from(bounds.min.is_some()),
            i32::from(bounds.max.is_some()),
        );
        {
            let (ptr, _sync) = data.device_ptr(&self.stream);
            let f = match dtype {
                DType::F32 => &self.f32,
                DType::BF16 => &self.bf16,
                DType::F16 => &self.f16,
                DType::I32 => &self.i32,
                other => {
                    return Err(CudaError(format!(
                    "on-device checks support float32, bfloat16, float16 and int32, not {other}"
                )))
                }
            };
            let mut b = self.stream.launch_builder(f);
            b.arg(&ptr).arg(&len);
            // Bounds are compared in the kernel's type: f32 for the float kernels (exact for
            // f32/bf16/f16 data; a bound between two f32 values rounds to the nearer), and
            // integer bounds rounded inward (a min of 0.5 admits 1, not 0) for int32.
            #[allow(clippy::cast_possible_truncation)]
            let (flo, fhi) = (
                bounds.min.unwrap_or(0.0) as f32,
                bounds.max.unwrap_or(0.0) as f32,
            );
            #[allow(clippy::cast_possible_truncation)]
            let (ilo, ihi) = (
                bounds.min.map_or(0, |v| v.ceil() as i64),
                bounds.max.map_or(0, |v| v.floor() as i64),
            );
            if dtype == DType::I32 {
                b.arg(&ilo).arg(&ihi);
            } else {
                b.arg(&flo).arg(&fhi);
            }
            b.arg(&has_lo).arg(&has_hi).arg(&mut stats);
            // SAFETY: the kernel's parameters match the argument list pushed above (pointer,
            // u64 length, two bounds of the dtype's comparison type, two ints, Stats*); `data`
            // holds at least `len` elements (checked); `stats` is one RawStats on this stream.
            unsafe { b.launch(cfg) }.map_err(err)?;
        }
        let raw = self.stream.clone_dtoh(&stats).map_err(err)?;
        self.stream.synchronize().map_err(err)?;
        let r = raw
            .first()
            .copied()
            .ok_or_else(|| CudaError("no statistics returned".into()))?;
        let first = |v: u64| (v != u64::MAX).then_some(v);
        let unkey = |k: u32| -> f64 {
            if dtype == DType::I32 {
                f64::from((k ^ 0x8000_0000) as i32)
            } else {
                let u = if k & 0x8000_0000 != 0 {
                    k & 0x7fff_ffff
                } else {
                    !k
                };
                f64::from(f32::from_bits(u))
            }
        };
        Ok(DeviceStats {
            len,
            nan: r.nan,
            pos_inf: r.posinf,
            neg_inf: r.neginf,
            below: r.below,
            above: r.above,
            first_nan: first(r.first_nan),
            first_inf: first(r.first_inf),
            first_below: first(r.first_below),
            first_above: first(r.first_above),
            min: (r.finite > 0).then(|| unkey(r.min_key)),
            max: (r.finite > 0).then(|| unkey(r.max_key)),
        })
    }
}

/// An input that already lives on the GPU: a borrowed cudarc slice viewed as `dtype[shape]`.
/// While it is borrowed, safe code cannot free or write the slice.
pub struct DeviceTensor<'a, T: cudarc::driver::DeviceRepr> {
    slice: &'a CudaSlice<T>,
    dtype: DType,
    shape: Vec<u64>,
}

impl<'a, T: cudarc::driver::DeviceRepr> DeviceTensor<'a, T> {
    /// Views `slice` as `dtype[shape]`; its byte size must match exactly.
    ///
    /// # Errors
    /// [`CudaError`] on a size mismatch or overflow.
    pub fn new(slice: &'a CudaSlice<T>, dtype: DType, shape: &[u64]) -> Result<Self, CudaError> {
        let need = crate::tensor::byte_len(dtype, shape)
            .ok_or_else(|| CudaError("shape overflows".into()))?;
        let have = slice.len().saturating_mul(std::mem::size_of::<T>());
        if need != have {
            return Err(CudaError(format!(
                "{} needs {need} bytes, the device slice holds {have}",
                crate::signature::format_type(dtype, shape.iter())
            )));
        }
        Ok(DeviceTensor {
            slice,
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Element count.
    pub fn len(&self) -> u64 {
        self.shape.iter().product()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scans the values on the device.
    ///
    /// # Errors
    /// As [`DeviceScanner::scan`].
    pub fn scan(&self, scanner: &DeviceScanner, bounds: Bounds) -> Result<DeviceStats, CudaError> {
        scanner.scan(self.slice, self.dtype, self.len(), bounds)
    }

    /// The little-endian bytes of the element at flat index `i` (one element copied to the
    /// host; for messages).
    ///
    /// # Errors
    /// [`CudaError`] on a failed copy or an index out of range.
    pub fn element_bytes(&self, scanner: &DeviceScanner, i: u64) -> Result<Vec<u8>, CudaError> {
        let size = self.dtype.size();
        let byte = usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(size))
            .ok_or_else(|| CudaError("index overflows".into()))?;
        let elem = std::mem::size_of::<T>().max(1);
        let (first, last) = (byte / elem, (byte + size).div_ceil(elem));
        let view = self
            .slice
            .try_slice(first..last)
            .ok_or_else(|| CudaError(format!("index {i} out of range")))?;
        let host: Vec<T> = scanner.stream.clone_dtoh(&view).map_err(err)?;
        scanner.stream.synchronize().map_err(err)?;
        // SAFETY: `host` holds `last - first` initialized `T`s, plain device-representable data;
        // viewing them as bytes is valid.
        let bytes =
            unsafe { std::slice::from_raw_parts(host.as_ptr().cast::<u8>(), host.len() * elem) };
        let off = byte - first * elem;
        bytes
            .get(off..off + size)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| CudaError("short copy".into()))
    }

    /// A PJRT buffer viewing this memory (no copy), valid while the borrow lasts.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn view(
        &self,
        client: &super::Client,
        scanner: &DeviceScanner,
    ) -> Result<super::BorrowedBuffer<'a>, super::PjrtError> {
        let dims: Vec<i64> = self
            .shape
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect();
        let (ptr, _sync) = self.slice.device_ptr(&scanner.stream);
        // The scanner's stream now waits for earlier writes; make them complete before PJRT's
        // own streams read the memory.
        scanner
            .stream
            .synchronize()
            .map_err(|e| super::PjrtError::Contract {
                function: "cuStreamSynchronize",
                detail: e.to_string(),
            })?;
        // SAFETY: `ptr` is the device address of `self.slice`, which holds exactly the bytes of
        // `dtype[shape]` (checked in `new`), dense, on the GPU the scanner was created for (the
        // CUDA plugin's device 0 shares the primary context). The returned buffer carries the
        // lifetime `'a` of the shared borrow of the slice, so safe code can neither free nor
        // write it while the buffer exists.
        let buf = unsafe {
            client.buffer_from_device_ptr(
                usize::try_from(ptr).map_err(|_| super::PjrtError::Contract {
                    function: "cuMemAlloc",
                    detail: "device pointer exceeds the address width".into(),
                })? as *mut std::ffi::c_void,
                self.dtype,
                &dims,
            )?
        };
        Ok(super::BorrowedBuffer::new(buf, None))
    }
}

/// Multi-dimensional index of flat index `i` in row-major `shape`.
pub fn unravel(mut i: u64, shape: &[u64]) -> Vec<u64> {
    let mut out = vec![0; shape.len()];
    for (slot, &d) in out.iter_mut().zip(shape).rev() {
        if d > 0 {
            *slot = i % d;
            i /= d;
        }
    }
    out
}

/// An input that lives on the GPU, of any element type (object-safe view of [`DeviceTensor`]).
pub trait DeviceInput<'a> {
    /// Element type.
    fn dtype(&self) -> DType;
    /// Shape.
    fn shape(&self) -> &[u64];
    /// Scans the values on the device.
    ///
    /// # Errors
    /// As [`DeviceScanner::scan`].
    fn scan(&self, scanner: &DeviceScanner, bounds: Bounds) -> Result<DeviceStats, CudaError>;
    /// One element's little-endian bytes, for messages.
    ///
    /// # Errors
    /// As [`DeviceTensor::element_bytes`].
    fn element_bytes(&self, scanner: &DeviceScanner, i: u64) -> Result<Vec<u8>, CudaError>;
    /// A PJRT view of the memory.
    ///
    /// # Errors
    /// The plugin's error.
    fn view(
        &self,
        client: &super::Client,
        scanner: &DeviceScanner,
    ) -> Result<super::BorrowedBuffer<'a>, super::PjrtError>;
}

impl<'a, T: cudarc::driver::DeviceRepr> DeviceInput<'a> for DeviceTensor<'a, T> {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[u64] {
        &self.shape
    }
    fn scan(&self, scanner: &DeviceScanner, bounds: Bounds) -> Result<DeviceStats, CudaError> {
        DeviceTensor::scan(self, scanner, bounds)
    }
    fn element_bytes(&self, scanner: &DeviceScanner, i: u64) -> Result<Vec<u8>, CudaError> {
        DeviceTensor::element_bytes(self, scanner, i)
    }
    fn view(
        &self,
        client: &super::Client,
        scanner: &DeviceScanner,
    ) -> Result<super::BorrowedBuffer<'a>, super::PjrtError> {
        DeviceTensor::view(self, client, scanner)
    }
}
