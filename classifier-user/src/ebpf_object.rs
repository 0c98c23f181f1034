//! The eBPF objects, built by build.rs and embedded so that `portguard` is
//! one self-contained binary.

/// The XDP classifier and the TC egress flow recorder.
pub static PORTGUARD: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard.bpf.o"));

/// An XDP program that only returns XDP_PASS: the floor for benchmarks.
pub static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));
