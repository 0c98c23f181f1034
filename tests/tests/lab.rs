//! The lab as a test: native XDP on a veth in a namespace, real sockets on
//! both sides, counters checked against what arrived, clean detach.

use std::sync::atomic::AtomicBool;

use testkit::lab::{self, CASES};

#[test]
fn lab_allowed_arrive_forbidden_dropped_counters_agree() {
    if !testkit::require_privileges("lab_allowed_arrive_forbidden_dropped_counters_agree") {
        return;
    }
    let never = AtomicBool::new(false);
    let report = lab::run(&testkit::portguard_bin(), &never).unwrap_or_else(|e| panic!("the lab did not run: {e:#}"));
    for (i, case) in CASES.iter().enumerate() {
        assert!(
            report.case_ok(i),
            "{} {} ({}): sent {} received {} but it is {}",
            case.proto.name(),
            case.port,
            case.what,
            report.sent[i],
            report.received[i],
            if case.allowed { "allowed" } else { "forbidden" }
        );
    }
    for (ok, text) in report.counter_checks() {
        assert!(ok, "counter check failed: {text}\nmetrics: {:#?}", report.metrics);
    }
    assert!(report.summary.contains("total:"), "portguard printed no summary on exit: {}", report.summary);
}
