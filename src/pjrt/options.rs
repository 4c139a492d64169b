//! `xla.CompileOptionsProto`, encoded with prost from hand-written message structs.
//!
//! The plugin aborts the whole process on empty options or on build options without both
//! `num_replicas` and `num_partitions` (see PJRT_NOTES.md). [`CompileOptions`] therefore has no
//! public fields, and every way to get one sets both counts to at least 1.

use std::num::NonZeroU32;

use prost::Message;

/// `xla.ExecutableBuildOptionsProto` (the fields we set).
#[derive(Clone, PartialEq, prost::Message)]
struct ExecutableBuildOptionsProto {
    /// Field 1: device ordinal, -1 for "not specified".
    #[prost(int64, tag = "1")]
    device_ordinal: i64,
    /// Field 4.
    #[prost(int64, tag = "4")]
    num_replicas: i64,
    /// Field 5.
    #[prost(int64, tag = "5")]
    num_partitions: i64,
}

/// `xla.CompileOptionsProto` (the fields we set).
#[derive(Clone, PartialEq, prost::Message)]
struct CompileOptionsProto {
    /// Field 3.
    #[prost(message, optional, tag = "3")]
    executable_build_options: Option<ExecutableBuildOptionsProto>,
}

/// Compile options. Always complete: replicas and partitions are at least 1.
///
/// ```
/// use xlaguard::pjrt::CompileOptions;
/// let bytes = CompileOptions::new().encode();
/// // field 3 { device_ordinal = -1, num_replicas = 1, num_partitions = 1 }
/// assert_eq!(bytes[0], 0x1a);
/// assert!(bytes.ends_with(&[0x20, 0x01, 0x28, 0x01]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    num_replicas: NonZeroU32,
    num_partitions: NonZeroU32,
    device_ordinal: Option<u32>,
}

impl CompileOptions {
    /// One replica, one partition, device chosen by the plugin.
    pub fn new() -> CompileOptions {
        CompileOptions {
            num_replicas: NonZeroU32::MIN,
            num_partitions: NonZeroU32::MIN,
            device_ordinal: None,
        }
    }

    /// Sets the number of replicas.
    pub fn num_replicas(&mut self, n: NonZeroU32) -> &mut Self {
        self.num_replicas = n;
        self
    }

    /// Sets the number of partitions.
    pub fn num_partitions(&mut self, n: NonZeroU32) -> &mut Self {
        self.num_partitions = n;
        self
    }

    /// Pins compilation to one device ordinal.
    pub fn device_ordinal(&mut self, n: Option<u32>) -> &mut Self {
        self.device_ordinal = n;
        self
    }

    /// The serialized `CompileOptionsProto`.
    pub fn encode(&self) -> Vec<u8> {
        CompileOptionsProto {
            executable_build_options: Some(ExecutableBuildOptionsProto {
                device_ordinal: self.device_ordinal.map_or(-1, i64::from),
                num_replicas: i64::from(self.num_replicas.get()),
                num_partitions: i64::from(self.num_partitions.get()),
            }),
        }
        .encode_to_vec()
    }
}

impl CompileOptions {
    /// Decodes options produced by [`CompileOptions::encode`]. Returns `None` for bytes that
    /// do not decode, or that lack a replica or partition count (which would abort the plugin).
    pub fn decode(bytes: &[u8]) -> Option<CompileOptions> {
        let p = CompileOptionsProto::decode(bytes).ok()?;
        let b = p.executable_build_options?;
        let count = |n: i64| u32::try_from(n).ok().and_then(NonZeroU32::new);
        Some(CompileOptions {
            num_replicas: count(b.num_replicas)?,
            num_partitions: count(b.num_partitions)?,
            device_ordinal: match b.device_ordinal {
                -1 => None,
                n => Some(u32::try_from(n).ok()?),
            },
        })
    }

    /// Replicas and partitions.
    pub fn counts(&self) -> (u32, u32) {
        (self.num_replicas.get(), self.num_partitions.get())
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_device_encodes_like_the_probe_minimum_plus_ordinal() {
        let mut o = CompileOptions::new();
        o.device_ordinal(Some(0));
        // device_ordinal 0 is proto3's default and is omitted: exactly the probe's 6 bytes.
        assert_eq!(o.encode(), [0x1a, 0x04, 0x20, 0x01, 0x28, 0x01]);
    }

    #[test]
    fn decode_round_trips_and_refuses_incomplete_options() {
        let mut o = CompileOptions::new();
        o.num_partitions(NonZeroU32::new(3).unwrap());
        assert_eq!(CompileOptions::decode(&o.encode()), Some(o));
        assert_eq!(CompileOptions::decode(&[]), None);
        // field 3 with only num_replicas = 1: the plugin would abort on it.
        assert_eq!(CompileOptions::decode(&[0x1a, 0x02, 0x20, 0x01]), None);
    }

    #[test]
    fn counts_are_always_present() {
        let mut o = CompileOptions::new();
        o.num_replicas(NonZeroU32::new(2).unwrap());
        let decoded = CompileOptionsProto::decode(o.encode().as_slice()).unwrap();
        let b = decoded.executable_build_options.unwrap();
        assert_eq!((b.num_replicas, b.num_partitions), (2, 1));
    }
}
