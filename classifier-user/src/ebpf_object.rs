//! The eBPF objects, built by build.rs and embedded so that `portguard` is
//! one self-contained binary.

/// The XDP classifier and the TC egress flow recorder.
pub static PORTGUARD: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portguard.bpf.o"));

/// An XDP program that only returns XDP_PASS: the floor for benchmarks.
/// build.rs builds it only for the `test-hooks` feature, which the package
/// build leaves off.
#[cfg(feature = "test-hooks")]
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

    /// A map added to the program but not to `map_names::ALL` would not be
    /// pinned: a restart would lose it without a word. Each map the program
    /// declares is pinned or named as a cache that a new program may start
    /// empty (aya-log's own maps aside).
    #[test]
    fn every_map_of_the_program_is_pinned_or_named_as_unpinned() {
        use std::collections::BTreeSet;

        use aya_obj::EbpfSectionKind;
        use classifier_common::map_names;

        let obj = aya_obj::Object::parse(PORTGUARD).expect("parsing the embedded portguard object");
        let declared: BTreeSet<&str> = obj
            .maps
            .iter()
            .filter(|(name, map)| {
                map.section_kind() == EbpfSectionKind::Maps && !name.starts_with("AYA_")
            })
            .map(|(name, _)| name.as_str())
            .collect();
        // The tests' TRACE map is in the object only with the test hooks.
        let named: BTreeSet<&str> = map_names::ALL
            .iter()
            .chain(map_names::UNPINNED.iter())
            .copied()
            .filter(|n| cfg!(feature = "test-hooks") || *n != map_names::TRACE)
            .collect();
        assert_eq!(
            declared, named,
            "the program's maps (left) against map_names::ALL + UNPINNED (right)"
        );
    }

    #[test]
    fn the_objects_declare_a_gpl_compatible_license_matching_the_crates() {
        let objects = [
            ("portguard", PORTGUARD),
            #[cfg(feature = "test-hooks")]
            ("floor", FLOOR),
        ];
        for (name, elf) in objects {
            assert_eq!(
                license(name, elf),
                b"Dual MIT/GPL\0",
                "{name}: the kernel needs a NUL-terminated, GPL-compatible string that offers MIT like the crate's `MIT OR Apache-2.0`"
            );
        }
    }
}
