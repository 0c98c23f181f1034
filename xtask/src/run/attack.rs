//! `cargo xtask run -- --scenario attack`: prints the attack scenario
//! (engine in `testkit::lab::edge::attack`): portguard's run, and the plants
//! again with portguard's nftables export in its place and with no firewall,
//! side by side. Fails when portguard lets a plant through, loses a
//! connection or a check fails, or when the no-firewall run does not get
//! through (the lab itself would be broken); the nftables column is a
//! comparison only.

use std::{sync::atomic::AtomicBool, time::Instant};

use anyhow::{Result, bail};

use super::{mark, outcome};
use testkit::lab::edge::attack::{self, Firewall, Mode, PlantRow, Report};

fn run(firewall: Firewall, floods: bool, interrupted: &AtomicBool) -> Result<Report> {
    let bin = crate::portguard_bin();
    outcome(
        attack::run(&attack::Options {
            bin: &bin,
            firewall,
            interrupted,
            floods,
            progress: true,
        }),
        interrupted,
        &format!("attack scenario with {}", firewall.name()),
    )
}

/// The same plant in another run.
fn same<'a>(report: &'a Report, row: &PlantRow) -> Option<&'a PlantRow> {
    report
        .plants
        .iter()
        .find(|r| r.mode == row.mode && r.family == row.family && r.case == row.case)
}

fn verdict(report: &Report, row: Option<&PlantRow>) -> String {
    match row {
        None => "-".to_string(),
        Some(r) => format!(
            "{} {}/{}",
            if r.reached() { "open  " } else { "closed" },
            r.listener,
            r.captured
        ),
    }
    .to_string()
        + match row {
            Some(r) if !report.plant_ok(r) => " !",
            _ => "",
        }
}

pub fn demo(interrupted: &AtomicBool) -> Result<()> {
    let began = Instant::now();
    println!(
        "== portguard attack lab: the edge lab's appliance ({} and {}) and a host ({}), under the attacks of issue 22",
        attack::EXT_LEG,
        attack::DMZ_LEG,
        attack::HOST_IF
    );
    println!("-- portguard (plants, floods, fragments, kill -9 and --clean-start):");
    let pg = run(Firewall::Portguard, true, interrupted)?;
    println!("-- portguard's nftables export in its place (the appliance's plants):");
    let nft = if which("nft") {
        Some(run(Firewall::Nftables, false, interrupted)?)
    } else {
        println!("   nft is not installed: no comparison");
        None
    };
    println!("-- no firewall (the plants; each must get through):");
    let none = run(Firewall::None, false, interrupted)?;
    println!("   namespaces: {}", pg.namespaces.join(", "));

    println!();
    println!(
        "PLANTS: the attacker's frames, then what it sends at the target's port; listener/capture = what reached the target's socket / its interface"
    );
    for mode in [Mode::Appliance, Mode::Host] {
        println!();
        println!(
            "{:<9} {:<5} {:<66} {:<28} {:>4}  {:<15} {:<15} {:<15}",
            mode.name(),
            "",
            "CASE",
            "TARGET",
            "SENT",
            "PORTGUARD",
            "NFT EXPORT",
            "NO FIREWALL"
        );
        for row in pg.plants.iter().filter(|r| r.mode == mode) {
            let cell = |r: &Option<Report>| {
                r.as_ref()
                    .map_or("-".to_string(), |n| verdict(n, same(n, row)))
            };
            println!(
                "{:<9} {:<5} {:<66} {:<28} {:>4}  {:<15} {:<15} {:<15}",
                "",
                row.family.name(),
                row.case,
                format!("{} {}", row.proto.name(), row.target),
                row.sent,
                verdict(&pg, Some(row)),
                cell(&nft),
                verdict(&none, same(&none, row)),
            );
        }
    }
    let (held, total) = pg.plants_held();
    println!();
    println!("portguard kept {held} of {total} plants closed (appliance and host, IPv4 and IPv6)");
    if let Some(n) = &nft {
        let (h, t) = n.plants_held();
        println!(
            "nftables, portguard's `catalog export --format nft --appliance` (conntrack for the answers), kept {h} of {t} of the appliance's closed"
        );
    }
    let (through, t) = none.plants_held();
    println!("without a firewall {through} of {t} got through (the lab's own check)");

    println!();
    println!("CONNECTIONS: a message each way, the side named speaking first");
    println!(
        "{:<9} {:<72} {:<44} {:<20} {:<8}  DETAIL",
        "", "WHEN", "CONNECTION", "FIRST", "RESULT"
    );
    for c in &pg.conns {
        println!(
            "{:<9} {:<72} {:<44} {:<20} {:<8}  {}",
            c.mode.name(),
            c.phase,
            c.what,
            c.first,
            match (c.ok(), c.worked) {
                (true, true) => "OK",
                (true, false) => "OK (drop)",
                (false, _) => "MISMATCH",
            },
            c.detail
        );
    }

    println!();
    println!(
        "FLOODS (unconfirmed evictions and refusals, confirmed entries: `portguard stats` before and after)"
    );
    println!(
        "{:<9} {:<78} {:>8} {:>8} {:>9} {:>7} {:>9} {:>8} {:>10} {:>9} {:>10}",
        "",
        "FLOOD",
        "FRAMES",
        "ADDRS",
        "ADDR:PORT",
        "SECS",
        "FRAMES/S",
        "COUNTED",
        "EVICTIONS",
        "REFUSALS",
        "CONFIRMED"
    );
    for f in &pg.floods {
        println!(
            "{:<9} {:<78} {:>8} {:>8} {:>9} {:>7.2} {:>9.0} {:>8} {:>10} {:>9} {:>4} -> {:<4}",
            f.mode.name(),
            f.name,
            f.frames,
            f.source_addresses,
            f.source_endpoints,
            f.duration.as_secs_f64(),
            f.rate(),
            f.counted,
            f.unconfirmed_evictions,
            f.unconfirmed_refusals,
            f.confirmed_before,
            f.confirmed_after
        );
    }
    println!(
        "   (COUNTED: packets of the flood's protocol portguard counted on the leg it arrived on)"
    );

    println!();
    println!(
        "FRAGMENTS: {}-byte UDP datagrams to the A/V Edge's 3478 over an MTU of {}, sent during a first-fragment flood",
        attack::BIG_DATAGRAM,
        attack::INTERNET_MTU
    );
    for f in &pg.fragments {
        println!(
            "   {} {:<5} {:<70} flood {:>6} frames: {} of {} datagrams, {} of {} bytes",
            mark(f.ok()),
            f.family.name(),
            f.what,
            f.flood_frames,
            f.received,
            f.sent,
            f.bytes_received,
            f.bytes_sent
        );
    }

    println!();
    println!("CHECKS");
    for (ok, text) in &pg.checks {
        println!("   {} {text}", mark(*ok));
    }
    println!();
    println!("`portguard stats` of the appliance after the floods:");
    for line in pg.stats.lines() {
        println!("   {line}");
    }

    let mut failures = pg.failures();
    failures.extend(
        none.failures()
            .into_iter()
            .map(|f| format!("without a firewall: {f}")),
    );
    println!();
    println!(
        "attack lab: portguard's run took {:.0} s, the whole scenario {:.0} s",
        pg.duration.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("   {f}");
        }
        bail!("{} mismatch(es): see above", failures.len());
    }
    println!(
        "attack lab: every plant left its port closed, the idle connections worked after every flood and after kill -9 and --clean-start, new connections opened during the floods, and no legitimate fragmented datagram was lost."
    );
    Ok(())
}

fn which(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok()
}
