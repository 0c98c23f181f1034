//! The eBPF objects, built by build.rs and embedded so that `portguard` is
//! one self-contained binary.

/// The XDP classifier and the TC egress flow recorder.
pub static PORTGUARD: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard.bpf.o"));

/// An XDP program that only returns XDP_PASS: the floor for benchmarks.
pub static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _};

    use super::*;

    /// The bytes of an object's `license` section.
    fn license(name: &str, elf: &[u8]) -> Vec<u8> {
        let file = object::File::parse(elf)
            .unwrap_or_else(|e| panic!("the embedded {name} object is not ELF: {e}"));
        let section = file
            .section_by_name("license")
            .unwrap_or_else(|| panic!("the {name} object has no `license` section"));
        section
            .data()
            .unwrap_or_else(|e| panic!("reading {name}'s license section: {e}"))
            .to_vec()
    }

    #[test]
    fn both_objects_declare_a_gpl_compatible_license_matching_the_crates() {
        for (name, elf) in [("portguard", PORTGUARD), ("floor", FLOOR)] {
            assert_eq!(
                license(name, elf),
                b"Dual MIT/GPL\0",
                "{name}: the kernel needs a NUL-terminated, GPL-compatible string that offers MIT like the crate's `MIT OR Apache-2.0`"
            );
        }
    }
}
