//! `cargo xtask run -- --scenario edge`: prints the routed edge lab
//! (engine in `testkit::lab::edge`) and fails on any mismatch.

use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};

use super::{UNITS, mark, outcome, print_peers};
use testkit::lab::{
    METRICS,
    edge::{self, DMZ_IF, EXT_IF, FAMILIES, Host, PROFILES},
};

pub fn demo(interrupted: &AtomicBool) -> Result<()> {
    println!(
        "== portguard edge lab: internet netns <-veth-> appliance netns (forwarding; portguard on {EXT_IF} and {DMZ_IF}) <-veth-> DMZ netns"
    );
    for (host, role) in PROFILES {
        println!(
            "   {:<14} {:<13} {:<15} --profile {role}",
            host.name(),
            host.ip(edge::Family::V4).to_string(),
            host.ip(edge::Family::V6).to_string(),
        );
    }
    println!(
        "   {:<14} {:<13} {:<15} (the appliance's own address: essentials and the SSH guard only)",
        Host::Appliance.name(),
        Host::Appliance.ip(edge::Family::V4).to_string(),
        Host::Appliance.ip(edge::Family::V6).to_string(),
    );
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
            "{:<5} {:<5} {:<29} {:>5}  {:<40} {:<9} {:>4} {:>8}  VERDICT",
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
            println!(
                "{:<5} {:<5} {:<29} {:>5}  {:<40} {:<9} {:>4} {:>8}  {}",
                "",
                row.proto.name(),
                format!("{} -> {}", row.from.name(), row.to.name()),
                row.port,
                row.what,
                if row.allowed { "allowed" } else { "forbidden" },
                row.sent,
                row.received,
                if report.row_ok(row) { "OK" } else { "MISMATCH" }
            );
        }
    }
    println!("{UNITS}");
    println!();
    println!("real protocol peers from the internet namespace, through the appliance:");
    print_peers(&report.peers, 44, 34);
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
        "edge lab: allowed traffic and its answers crossed the appliance both ways, every forbidden variant was dropped, and the per-leg counters agree."
    );
    Ok(())
}
