//! The attack scenario as a test (engine in `testkit::lab::edge::attack`): the
//! plants of issue 22 against the appliance and a host, each leaving its
//! port closed; idle connections through spoofed floods of 250,000 sources
//! and more, a single-source flood, first-fragment floods and a `kill -9`
//! with `run --clean-start`; the same plants without a firewall (each gets
//! through: the lab itself works) and with portguard's nftables export in
//! its place.

use std::sync::atomic::AtomicBool;

use testkit::lab::edge::{
    FAMILIES,
    attack::{self, Firewall, Mode, Report},
};

fn run(test: &str, firewall: Firewall, floods: bool) -> Option<Report> {
    if !testkit::require_privileges(test) {
        return None;
    }
    if firewall == Firewall::Nftables && !testkit::require_program(test, "nft", "nftables") {
        return None;
    }
    // The runs flood the machine's cores: one at a time, and nothing beside.
    let _alone = crate::ALONE.hold();
    let never = AtomicBool::new(false);
    let bin = testkit::portguard_bin();
    let report = attack::run(&attack::Options {
        bin: &bin,
        firewall,
        interrupted: &never,
        floods,
        progress: false,
    })
    .unwrap_or_else(|e| {
        panic!(
            "the attack scenario did not run ({}): {e:#}",
            firewall.name()
        )
    });
    Some(report)
}

/// Every plant ran in both families (IPv4 only where the case is).
fn assert_every_plant_ran(report: &Report, modes: &[Mode]) {
    for &mode in modes {
        let cases = attack::plant_cases(mode);
        for family in FAMILIES {
            let ran = report
                .plants
                .iter()
                .filter(|r| r.mode == mode && r.family == family)
                .count();
            let expected = cases
                .iter()
                .filter(|c| family == testkit::lab::edge::Family::V4 || !c.v4_only)
                .count();
            assert_eq!(
                ran,
                expected,
                "{} mode, {}: {ran} plants ran, {expected} expected",
                mode.name(),
                family.name()
            );
        }
    }
}

#[test]
fn attack_lab_portguard_keeps_every_plant_closed_and_the_idle_connections_alive() {
    let test = "attack_lab_portguard_keeps_every_plant_closed_and_the_idle_connections_alive";
    let Some(report) = run(test, Firewall::Portguard, true) else {
        return;
    };
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n{}\n\nportguard stats after the floods:\n{}",
        failures.len(),
        report.plants.len() + report.conns.len() + report.fragments.len() + report.checks.len(),
        failures.join("\n"),
        report.stats
    );
    assert_every_plant_ran(&report, &[Mode::Appliance, Mode::Host]);
    assert_eq!(
        report.floods.len(),
        8,
        "four floods on the appliance, four on the host"
    );
    assert_eq!(report.fragments.len(), 4, "two fragment floods per family");
    for phase in [
        "after: spoofed SYNs to the Access Edge 5061, IPv4, many sources",
        "after: spoofed SYNs to the Access Edge 5061, IPv6, many sources",
        "after kill -9 and run --clean-start",
    ] {
        let n = report.conns.iter().filter(|c| c.phase == phase).count();
        assert!(
            n >= attack::IDLE_FLOWS as usize,
            "{n} idle connections checked {phase}, {} expected",
            attack::IDLE_FLOWS
        );
    }
    assert!(
        report.conns.iter().any(|c| c.phase.starts_with("during: ")),
        "no connection was opened during a flood"
    );
}

/// The same plants with nothing on the appliance or the host: everything
/// the attackers send reaches the targets' listeners or wires. So in the
/// test above a closed port is portguard's doing, not the lab's.
#[test]
fn attack_lab_without_a_firewall_every_plant_gets_through() {
    let test = "attack_lab_without_a_firewall_every_plant_gets_through";
    let Some(report) = run(test, Firewall::None, false) else {
        return;
    };
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_every_plant_ran(&report, &[Mode::Appliance, Mode::Host]);
}

/// The nftables stand-in: portguard's own `catalog export
/// --appliance` ruleset (conntrack for the answers; the outbound rows only
/// for a source routed back through the interface it arrived on). It keeps
/// every plant of the appliance closed too.
#[test]
fn attack_lab_nftables_export_keeps_every_plant_closed() {
    let test = "attack_lab_nftables_export_keeps_every_plant_closed";
    let Some(report) = run(test, Firewall::Nftables, false) else {
        return;
    };
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_every_plant_ran(&report, &[Mode::Appliance]);
}
