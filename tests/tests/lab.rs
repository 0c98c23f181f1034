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
    let bin = testkit::portguard_bin();
    let report = lab::run(&lab::Options {
        bin: &bin,
        interrupted: &never,
        peers: true,
        live: false,
    })
    .unwrap_or_else(|e| panic!("the lab did not run: {e:#}"));
    for p in &report.peers {
        assert!(
            p.ok,
            "{} to {} failed through portguard: {}",
            p.name, p.target, p.detail
        );
    }
    assert_eq!(report.peers.len(), 3, "sipp, STUN and HTTPS peers all ran");
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
        assert!(
            ok,
            "counter check failed: {text}\nmetrics: {:#?}",
            report.metrics
        );
    }
    assert!(
        report.summary.contains("total:"),
        "portguard printed no summary on exit: {}",
        report.summary
    );
}
