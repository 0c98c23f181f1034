//! The host scenario as a test (`testkit::lab::host`): native XDP on a veth
//! in a namespace, real sockets and real peers on both sides, counters
//! checked against what arrived, clean detach.

use std::sync::atomic::AtomicBool;

use testkit::lab::host;

#[test]
fn lab_allowed_arrive_forbidden_dropped_counters_agree() {
    if !testkit::require_privileges("lab_allowed_arrive_forbidden_dropped_counters_agree") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let never = AtomicBool::new(false);
    let bin = testkit::portguard_bin();
    let report = host::run(&host::Options {
        bin: &bin,
        interrupted: &never,
        peers: true,
        live: false,
    })
    .expect("the lab did not run");
    for p in &report.peers {
        assert!(
            p.ok,
            "{} to {} failed through portguard: {}",
            p.name, p.target, p.detail
        );
    }
    assert_eq!(report.peers.len(), 3, "sipp, STUN and HTTPS peers all ran");
    let failures = report.case_failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (ok, text) in report.counter_checks() {
        assert!(
            ok,
            "counter check failed: {text}\nmetrics:\n{}",
            report.metrics.as_ref().map_or("none", |m| m.text.as_str())
        );
    }
    assert!(
        report.summary.contains("total:"),
        "portguard printed no summary on exit: {}",
        report.summary
    );
}
