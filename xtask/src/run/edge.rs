//! `cargo xtask run -- --scenario edge`: prints the routed edge lab
//! (engine in `testkit::lab::edge`) and fails on any mismatch.

use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};

use super::{UNITS, mark, outcome, print_peers};
use testkit::lab::{
    METRICS,
    edge::{self, ADDRESS_SETS, DMZ_IF, EXT_IF, Expect, FAMILIES, Host, PROFILES, Refusal},
};

pub fn demo(interrupted: &AtomicBool) -> Result<()> {
    println!(
        "== portguard edge lab: internet netns <-veth-> appliance netns (forwarding; portguard on {EXT_IF} and {DMZ_IF}) <-veth-> DMZ netns"
    );
    let line = |host: Host, what: &str| {
        println!(
            "   {:<14} {:<13} {:<15} {what}",
            host.name(),
            host.ip(edge::Family::V4).to_string(),
            host.ip(edge::Family::V6).to_string(),
        );
    };
    for (host, _) in PROFILES {
        line(host, &format!("--profile {}", edge::lab_roles(host)));
    }
    line(
        Host::Appliance,
        "(the appliance's own address: essentials and the SSH guard only)",
    );
    for (set, host) in ADDRESS_SETS {
        line(
            host,
            &format!("(internet) the only address of the {set} set"),
        );
    }
    line(Host::Stranger, "(internet) in no address set");
    println!("   portguard {}", edge::portguard_args()[1..].join(" "));
    let bin = crate::portguard_bin();
    let report = outcome(
        edge::run(&edge::Options {
            bin: Some(&bin),
            interrupted,
            peers: true,
            live: true,
        }),
        interrupted,
        "edge lab",
    )?;
    println!("   namespaces: {}", report.namespaces.join(", "));
    for family in FAMILIES {
        println!();
        println!(
            "{:<5} {:<5} {:<29} {:>5}  {:<40} {:<16} {:>4} {:>8}  VERDICT",
            family.name(),
            "PROTO",
            "FROM -> TO",
            "PORT",
            "WHAT",
            "EXPECTED",
            "SENT",
            "RECEIVED"
        );
        for row in report.rows.iter().filter(|r| r.family == family) {
            let verdict = match (report.row_ok(row), report.gap(row), row.expect) {
                (true, Some(_), _) => "KNOWN GAP (below)",
                (false, _, Expect::Gap(..)) => "MISMATCH: the known gap is closed, make it allowed",
                (ok, _, _) => mark(ok).trim_end(),
            };
            println!(
                "{:<5} {:<5} {:<29} {:>5}  {:<40} {:<16} {:>4} {:>8}  {verdict}",
                "",
                row.proto.name(),
                format!("{} -> {}", row.from.name(), row.to.name()),
                row.port,
                row.what,
                expected(row.expect),
                row.sent,
                row.received,
            );
        }
    }
    println!("{UNITS}");
    println!(
        "   (forbidden: dropped, as port_not_allowed (port) or peer_not_allowed (peer: a rule names the port, its address sets leave the sender out))"
    );
    // Once per case, not per family.
    let mut gaps: Vec<(&str, &str)> = Vec::new();
    for gap in report
        .rows
        .iter()
        .filter_map(|r| report.gap(r).map(|why| (r.what, why)))
    {
        if !gaps.contains(&gap) {
            gaps.push(gap);
        }
    }
    for (what, why) in gaps {
        println!(
            "   known gap, {what}: allowed by the catalog, dropped as peer_not_allowed: {why}"
        );
    }
    println!();
    println!("real protocol peers from the internet namespace, through the appliance:");
    print_peers(&report.peers, 47, 34);
    println!();
    match &report.metrics {
        Some(m) => {
            println!("portguard's counters from GET /metrics after the socket traffic, per leg:");
            for s in m.samples.iter().filter(|s| {
                s.name == "portguard_packets_total" || s.name == "portguard_drops_total"
            }) {
                println!("   {} {}", s.series(), s.value);
            }
        }
        None => println!(
            "note: the metrics endpoint did not answer on {METRICS} in the appliance namespace"
        ),
    }
    println!("counters against the receivers:");
    for (ok, text) in report.counter_checks() {
        println!("   {} {text}", mark(ok));
    }
    println!();
    println!("portguard's own summary on exit (SIGINT):");
    println!("{}", report.summary.trim_end());
    println!();
    let bad = report.mismatches();
    if bad > 0 {
        bail!("{bad} mismatch(es): see above");
    }
    println!(
        "edge lab: allowed traffic and its answers crossed the appliance both ways, every forbidden variant was dropped (a stranger's for its address), and the per-leg counters agree."
    );
    Ok(())
}

/// A row's EXPECTED column.
fn expected(expect: Expect) -> &'static str {
    match expect {
        Expect::Allowed => "allowed",
        Expect::Forbidden(Refusal::Port) => "forbidden (port)",
        Expect::Forbidden(Refusal::Peer) => "forbidden (peer)",
        Expect::Gap(..) => "allowed (gap)",
    }
}
