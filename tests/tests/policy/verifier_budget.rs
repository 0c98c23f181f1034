//! The verifier's budget: each program the kernel accepts must leave room
//! under the 1,000,000 instructions the verifier walks at most, so that a
//! change to the packet path learns here, with figures, that it is close to
//! the limit, and not from a program that no longer loads on a kernel whose
//! verifier walks a little more.

use portguard::loader::{Classifier, FlowLimits};

/// The verifier gives up past this many processed instructions.
const VERIFIER_LIMIT: u32 = 1_000_000;
/// The share of the limit a program may use: the rest is headroom for
/// another kernel's verifier.
const MAX_SHARE_PERCENT: u32 = 90;

#[test]
fn every_program_leaves_headroom_under_the_verifier_limit() {
    if !testkit::require_privileges("verifier_budget") {
        return;
    }
    let classifier = Classifier::load_object(
        portguard::ebpf_object::PORTGUARD,
        None,
        &FlowLimits::default(),
    )
    .expect("loading the object");
    let counts = classifier
        .verified_instructions()
        .expect("reading the programs' info");
    for (name, count) in &counts {
        println!("{name}: {count} instructions verified");
    }
    let names: Vec<&str> = counts.iter().map(|(n, _)| n.as_str()).collect();
    for program in ["portguard", "portguard_media"] {
        assert!(
            names.contains(&program),
            "no verified count for {program}: the kernel reported {names:?}"
        );
    }
    for (name, count) in &counts {
        assert!(
            *count <= VERIFIER_LIMIT / 100 * MAX_SHARE_PERCENT,
            "{name}: the verifier processed {count} instructions, more than {MAX_SHARE_PERCENT}% of its {VERIFIER_LIMIT}"
        );
    }
}
