//! On-device checks and device-resident inputs on a real NVIDIA GPU (feature `cuda`).
//!
//! Built only with `--features cuda`; run by `scripts/gpu-check.sh` on the GPU machine (CI has
//! no GPU, and without the feature this file is empty). The CUDA plugin is found by discovery
//! (`--device cuda`), or taken from `XLAGUARD_PLUGIN`.
#![cfg(feature = "cuda")]

use std::path::Path;
use std::sync::OnceLock;

use half::{bf16, f16};
use xlaguard::pjrt::cuda::{Bounds, DeviceInput, DeviceScanner, DeviceTensor};
use xlaguard::pjrt::ClientOptions;
use xlaguard::plugin::DeviceKind;
use xlaguard::validate::policy::{OutOfRange, Policy};
use xlaguard::{DType, Engine, EngineConfig, Error, Tensor};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut c = EngineConfig::default();
        c.device(DeviceKind::Cuda);
        // Tests share the GPU with cudarc allocations: no preallocation.
        c.client_options = Some(ClientOptions::gpu(None, Some(false), None));
        // The fixtures were exported for cpu; their StableHLO is platform-neutral and the GPU
        // check compares the same modules against JAX on the GPU.
        c.allow_platform_mismatch = true;
        let e = Engine::new(&c).expect("CUDA plugin");
        assert_eq!(e.client().platform(), "cuda");
        e
    })
}

fn scanner() -> &'static DeviceScanner {
    static S: OnceLock<DeviceScanner> = OnceLock::new();
    S.get_or_init(|| {
        engine(); // the plugin's preload makes NVRTC loadable
        DeviceScanner::new(0).expect("scanner")
    })
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo").join(name)
}

const N: usize = 1_000_003; // not a multiple of any vector width: exercises the tail

fn positions() -> [usize; 3] {
    [0, N / 2, N - 1]
}

#[test]
fn clean_buffers_pass_and_min_max_are_exact() {
    let s = scanner();
    let host: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 - 500.0).collect();
    let d = s.stream().clone_htod(&host).unwrap();
    let st = DeviceTensor::new(&d, DType::F32, &[N as u64])
        .unwrap()
        .scan(
            s,
            Bounds {
                min: Some(-500.0),
                max: Some(499.0),
            },
        )
        .unwrap();
    assert_eq!(
        (st.nan, st.pos_inf, st.neg_inf, st.below, st.above),
        (0, 0, 0, 0, 0)
    );
    assert_eq!((st.min, st.max), (Some(-500.0), Some(499.0)));
    let ids: Vec<i32> = (0..N).map(|i| i32::try_from(i % 50).unwrap()).collect();
    let d = s.stream().clone_htod(&ids).unwrap();
    let st = DeviceTensor::new(&d, DType::I32, &[N as u64])
        .unwrap()
        .scan(
            s,
            Bounds {
                min: Some(0.0),
                max: Some(49.0),
            },
        )
        .unwrap();
    assert_eq!(
        (st.below, st.above, st.min, st.max),
        (0, 0, Some(0.0), Some(49.0))
    );
}

#[test]
fn nan_inf_and_range_at_first_middle_last_f32() {
    let s = scanner();
    for p in positions() {
        for (bad, what) in [
            (f32::NAN, "nan"),
            (f32::INFINITY, "inf"),
            (-f32::INFINITY, "-inf"),
            (1e6, "above"),
            (-1e6, "below"),
        ] {
            let mut host = vec![1.0f32; N];
            host[p] = bad;
            let d = s.stream().clone_htod(&host).unwrap();
            let st = DeviceTensor::new(&d, DType::F32, &[N as u64])
                .unwrap()
                .scan(
                    s,
                    Bounds {
                        min: Some(-10.0),
                        max: Some(10.0),
                    },
                )
                .unwrap();
            match what {
                "nan" => assert_eq!((st.nan, st.first_nan), (1, Some(p as u64)), "{what} at {p}"),
                "inf" => assert_eq!(
                    (st.pos_inf, st.first_inf, st.above),
                    (1, Some(p as u64), 1),
                    "{what} at {p}"
                ),
                "-inf" => assert_eq!(
                    (st.neg_inf, st.first_inf, st.below),
                    (1, Some(p as u64), 1),
                    "{what} at {p}"
                ),
                "above" => assert_eq!(
                    (st.above, st.first_above, st.max),
                    (1, Some(p as u64), Some(1e6)),
                    "{what} at {p}"
                ),
                _ => assert_eq!(
                    (st.below, st.first_below, st.min),
                    (1, Some(p as u64), Some(-1e6)),
                    "{what} at {p}"
                ),
            }
        }
    }
}

#[test]
fn every_nan_payload_in_bf16_and_f16_is_caught_in_their_own_width() {
    let s = scanner();
    // Every NaN bit pattern of bf16 (exponent all ones, mantissa non-zero, both signs).
    let nans_bf16: Vec<u16> = (0u16..=0xffff).filter(|b| b & 0x7fff > 0x7f80).collect();
    let mut host: Vec<u16> = vec![bf16::from_f32(1.0).to_bits(); nans_bf16.len() * 2 + 7];
    for (k, &b) in nans_bf16.iter().enumerate() {
        host[2 * k + 1] = b;
    }
    let d = s.stream().clone_htod(&host).unwrap();
    let st = DeviceTensor::new(&d, DType::BF16, &[host.len() as u64])
        .unwrap()
        .scan(s, Bounds::default())
        .unwrap();
    assert_eq!((st.nan, st.first_nan), (nans_bf16.len() as u64, Some(1)));
    let nans_f16: Vec<u16> = (0u16..=0xffff).filter(|b| b & 0x7fff > 0x7c00).collect();
    let mut host: Vec<u16> = vec![f16::from_f32(1.0).to_bits(); nans_f16.len() + 3];
    host[3..].copy_from_slice(&nans_f16);
    let d = s.stream().clone_htod(&host).unwrap();
    let st = DeviceTensor::new(&d, DType::F16, &[host.len() as u64])
        .unwrap()
        .scan(s, Bounds::default())
        .unwrap();
    assert_eq!((st.nan, st.first_nan), (nans_f16.len() as u64, Some(3)));
    // -0.0, subnormals and ±max are finite and in range of ±max.
    let vals = [-0.0f32, 1e-40, -1e-40, 65504.0, -65504.0];
    let host: Vec<u16> = vals.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    let d = s.stream().clone_htod(&host).unwrap();
    let st = DeviceTensor::new(&d, DType::F16, &[host.len() as u64])
        .unwrap()
        .scan(
            s,
            Bounds {
                min: Some(-65504.0),
                max: Some(65504.0),
            },
        )
        .unwrap();
    assert_eq!(
        (st.nan, st.pos_inf, st.neg_inf, st.below, st.above),
        (0, 0, 0, 0, 0)
    );
    assert_eq!((st.min, st.max), (Some(-65504.0), Some(65504.0)));
}

/// The digits model with the policy `pixels in [0, 16]` (default NaN/Inf rejection).
fn digits_with_range() -> xlaguard::Model {
    let m = engine()
        .load_file(&fixture("digits").join("model.jaxexport"))
        .unwrap();
    let mut p = Policy::new();
    p.input("pixels").range(0.0, 16.0);
    m.with_policy(p).unwrap()
}

#[test]
fn device_inputs_run_without_a_host_round_trip_and_match_the_host_path() {
    let s = scanner();
    let dir = fixture("digits");
    let m = digits_with_range();
    let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
    let host_out = m.run(&[x.view()]).unwrap();
    let xs = x.to_array::<f32>().unwrap();
    let d = s.stream().clone_htod(xs.as_slice().unwrap()).unwrap();
    let t = DeviceTensor::new(&d, DType::F32, &[1, 64]).unwrap();
    let inputs: [&dyn DeviceInput<'_>; 1] = [&t];
    let out = m.run_device(s, &inputs).unwrap();
    assert_eq!(out, host_out);
    // JAX on the CPU predicted 2 for this digit; the GPU must agree.
    assert_eq!(out[0].to_array::<i32>().unwrap()[[0]], 2);
}

#[test]
fn device_values_are_rejected_with_the_host_message_format() {
    let s = scanner();
    let m = digits_with_range();
    let mut host = vec![1.0f32; 64];
    host[41] = 255.0;
    host[50] = 300.0;
    host[63] = 17.0;
    let dirty = Tensor::from_slice(&[1, 64], &host).unwrap();
    // The host scan's refusal, for comparison: the device must say exactly the same.
    let host_err = m.run(&[dirty.view()]).unwrap_err().to_string();
    assert_eq!(
        host_err,
        "input 'pixels': 3 values above max 16.0; first at [0, 41] = 255.0"
    );
    let d = s.stream().clone_htod(&host).unwrap();
    let t = DeviceTensor::new(&d, DType::F32, &[1, 64]).unwrap();
    let inputs: [&dyn DeviceInput<'_>; 1] = [&t];
    let e = m.run_device(s, &inputs).unwrap_err();
    assert!(matches!(e, Error::PolicyViolation(_)), "{e}");
    assert_eq!(e.to_string(), host_err);
    host[41] = f32::NAN;
    let d = s.stream().clone_htod(&host).unwrap();
    let t = DeviceTensor::new(&d, DType::F32, &[1, 64]).unwrap();
    let inputs: [&dyn DeviceInput<'_>; 1] = [&t];
    let e = m.run_device(s, &inputs).unwrap_err();
    assert_eq!(
        e.to_string(),
        m.run(&[Tensor::from_slice(&[1, 64], &host).unwrap().view()])
            .unwrap_err()
            .to_string()
    );
    assert!(
        e.to_string()
            .starts_with("input 'pixels': 1 NaN value; first at [0, 41] = NaN"),
        "{e}"
    );
    // A rule that rewrites values cannot apply to device inputs: refused, typed.
    let mut p = Policy::new();
    p.input("pixels")
        .range(0.0, 16.0)
        .out_of_range(OutOfRange::Clip);
    let clip = digits_with_range().with_policy(p).unwrap();
    assert!(matches!(clip.run_device(s, &inputs), Err(Error::Cuda(_))));
    // Wrong shape is caught before any scan.
    let t = DeviceTensor::new(&d, DType::F32, &[64]).unwrap();
    let inputs: [&dyn DeviceInput<'_>; 1] = [&t];
    assert!(matches!(
        m.run_device(s, &inputs),
        Err(Error::InvalidInput(_))
    ));
}
