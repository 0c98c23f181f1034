//! The routed edge lab as a test (`testkit::lab::edge`): internet ↔ appliance (portguard on both
//! legs, forwarding) ↔ DMZ with the Access, Web Conferencing and A/V Edge
//! addresses and a reverse proxy; every row of traffic, every real peer and
//! every per-leg counter check, in IPv4 and IPv6.

use std::sync::atomic::AtomicBool;

use testkit::lab::edge::{self, FAMILIES, Report};

fn run(test: &str, firewall: bool) -> Option<Report> {
    if !testkit::require_privileges(test) {
        return None;
    }
    for (program, package) in [
        ("sipp", "sip-tester"),
        ("turnserver", "coturn"),
        ("curl", "curl"),
        ("openssl", "openssl"),
    ] {
        if !testkit::require_program(test, program, package) {
            return None;
        }
    }
    let _alone = crate::ALONE.hold();
    let never = AtomicBool::new(false);
    let bin = testkit::portguard_bin();
    let report = edge::run(&edge::Options {
        bin: firewall.then_some(bin.as_path()),
        interrupted: &never,
        peers: true,
        live: false,
    })
    .expect("the edge lab did not run");
    Some(report)
}

fn assert_rows_and_peers(report: &Report) {
    let failures = report.case_failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for family in FAMILIES {
        assert_eq!(
            report.rows.iter().filter(|r| r.family == family).count(),
            edge::CASES.len() + edge::MEDIA_ROWS,
            "every case and the media rows ran in {}",
            family.name()
        );
    }
    let bad: Vec<String> = report
        .peers
        .iter()
        .filter(|p| !p.ok)
        .map(|p| format!("{} to {}: {}", p.name, p.target, p.detail))
        .collect();
    assert!(
        bad.is_empty(),
        "real peers that did not do what the policy says:\n{}",
        bad.join("\n")
    );
    assert_eq!(report.peers.len(), 20, "10 peer runs in each family");
}

#[test]
fn edge_lab_allowed_arrive_forbidden_dropped_per_leg_counters_agree() {
    let test = "edge_lab_allowed_arrive_forbidden_dropped_per_leg_counters_agree";
    let Some(report) = run(test, true) else {
        return;
    };
    assert_rows_and_peers(&report);
    for (ok, text) in report.counter_checks() {
        assert!(
            ok,
            "counter check failed: {text}\nmetrics:\n{}",
            report.metrics.as_ref().map_or("none", |m| m.text.as_str())
        );
    }
    for leg in [edge::EXT_IF, edge::DMZ_IF] {
        assert!(
            report.summary.contains(leg),
            "portguard's summary on exit does not name the leg {leg}: {}",
            report.summary
        );
    }
}

/// The same lab with no firewall: every row arrives and every peer, the
/// forbidden ones included, gets through. So in the test above a forbidden
/// row or peer fails because of portguard, not because nothing listened.
#[test]
fn edge_lab_without_portguard_everything_gets_through() {
    let test = "edge_lab_without_portguard_everything_gets_through";
    let Some(report) = run(test, false) else {
        return;
    };
    assert!(
        !report.firewall && report.counter_checks().is_empty(),
        "no firewall, no counters"
    );
    assert_rows_and_peers(&report);
}
