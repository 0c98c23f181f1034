//! `cargo xtask run`: the lab demos, over the lab engine `testkit::lab`
//! (the host scenario, `testkit::lab::host`, printed here; the routed edge
//! scenario, `testkit::lab::edge`, printed by [`edge`]; the attack scenario,
//! `testkit::lab::edge::attack`, printed by [`attack`]), or, with
//! portguard's flags, portguard in the foreground on a real interface.

mod attack;
mod edge;

use std::{
    collections::BTreeMap,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use testkit::lab::{
    MEDIA, METRICS, PeerResult, ROLES,
    host::{self, CASES, SERVER_IF},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C reaches every process of the foreground group: portguard detaches
/// by itself. xtask only notes it, so that it can stop the lab, drop its
/// guards (portguard, peers, namespaces) and report. A handled signal is
/// reset to the default in exec'd children, unlike an ignored one, so the
/// children still stop on Ctrl-C.
fn catch_sigint() {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

/// Which lab scenario `cargo xtask run` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// portguard on a host: client namespace <-> server namespace.
    Host,
    /// The routed perimeter: internet <-> appliance (portguard on both
    /// legs) <-> DMZ with the Edge Server addresses and a reverse proxy.
    Edge,
    /// The edge topology and a host under attack: plants, spoofed floods,
    /// fragment floods, kill -9 and run --clean-start.
    Attack,
    /// The host scenario, the edge scenario, then the attack scenario.
    All,
}

/// The arguments after `cargo xtask run --` when they choose a lab scenario.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask run --", no_binary_name = true)]
struct LabArgs {
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
}

/// What `cargo xtask run -- ARGS` means: no arguments or `--scenario S` is
/// a lab scenario (`None` for anything else: portguard's own `run` flags,
/// for a real interface).
pub fn scenario(args: &[String]) -> Result<Option<Scenario>> {
    let chooses = args.is_empty() || args.iter().any(|a| a.starts_with("--scenario"));
    if !chooses {
        return Ok(None);
    }
    match LabArgs::try_parse_from(args) {
        Ok(lab) => Ok(Some(lab.scenario)),
        Err(e) => bail!(
            "{}(`--scenario host|edge|attack|all` runs a lab scenario and takes no other argument; portguard's `run` flags, `--iface IF --role R ...`, run it on a real interface)",
            e.render()
        ),
    }
}

/// One scenario's printer.
type Demo = fn() -> Result<()>;

/// Runs the chosen scenarios; with `all`, each runs even if one before it
/// failed, and the run fails if any did.
pub fn lab(scenario: Scenario) -> Result<()> {
    catch_sigint();
    let all = scenario == Scenario::All;
    let mut failed = Vec::new();
    let scenarios: [(Scenario, &str, Demo); 3] = [
        (Scenario::Host, "host", demo),
        (Scenario::Edge, "edge", || edge::demo(&INTERRUPTED)),
        (Scenario::Attack, "attack", || attack::demo(&INTERRUPTED)),
    ];
    for (i, (which, name, demo)) in scenarios.into_iter().enumerate() {
        if !(all || scenario == which) {
            continue;
        }
        if all && i > 0 {
            println!();
        }
        if let Err(e) = demo() {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(e);
            }
            eprintln!("xtask run: {name} scenario: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("the {} scenario failed", failed.join(" and the "));
    }
    Ok(())
}

/// `cargo xtask run -- --iface IF --role R …`: `portguard run` with those
/// flags, in the foreground, with its exit code.
pub fn real_interface(args: &[String]) -> Result<ExitCode> {
    catch_sigint();
    let bin = crate::portguard_bin();
    eprintln!("xtask run: {} run {}", bin.display(), args.join(" "));
    let status = Command::new(&bin)
        .arg("run")
        .args(args)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => {
            eprintln!("xtask run: portguard exited with {code}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        None => {
            eprintln!("xtask run: portguard ended by {status}");
            ExitCode::FAILURE
        }
    })
}

/// A scenario's result: after Ctrl-C, the interruption alone; otherwise
/// its error, saying that the `what` failed. Either way the scenario has
/// stopped portguard and removed its namespaces.
fn outcome<T>(result: Result<T>, interrupted: &AtomicBool, what: &str) -> Result<T> {
    match result {
        Ok(r) => Ok(r),
        Err(_) if interrupted.load(Ordering::SeqCst) => {
            bail!("interrupted; portguard was stopped and the {what}'s namespaces removed")
        }
        Err(e) => Err(e.context(format!("the {what} failed (its namespaces were removed)"))),
    }
}

/// What a check came to, in one width: `OK` or `MISMATCH`.
fn mark(ok: bool) -> &'static str {
    if ok { "OK      " } else { "MISMATCH" }
}

/// Under a table of socket cases: what its counts count.
const UNITS: &str = "   (UDP: datagrams; TCP: connection attempts, and connections over which the messages arrived)";

/// A line per peer: whether it did what the policy says, its name and
/// target in columns `name` and `target` wide, and the detail.
fn print_peers(peers: &[PeerResult], name: usize, target: usize) {
    for p in peers {
        println!(
            "   {} {:<name$} {:<target$} {}",
            mark(p.ok),
            p.name,
            p.target,
            p.detail
        );
    }
}

/// The host scenario.
fn demo() -> Result<()> {
    println!(
        "== portguard lab: client netns <-veth-> server netns; portguard run --iface {SERVER_IF} --role {ROLES} --client-media-ports {MEDIA}"
    );
    let bin = crate::portguard_bin();
    let report = outcome(
        host::run(&host::Options {
            bin: &bin,
            interrupted: &INTERRUPTED,
            peers: true,
            live: true,
        }),
        &INTERRUPTED,
        "lab",
    )?;
    println!(
        "   {} 198.18.0.1 / 2001:db8::1  <->  {} 198.18.0.2 / 2001:db8::2 (metrics on {METRICS} inside)",
        report.client, report.server
    );
    println!();
    println!(
        "{:<6} {:>6}  {:<46} {:<9} {:>5} {:>9}  VERDICT",
        "PROTO", "PORT", "WHAT", "EXPECTED", "SENT", "RECEIVED"
    );
    for (i, case) in CASES.iter().enumerate() {
        println!(
            "{:<6} {:>6}  {:<46} {:<9} {:>5} {:>9}  {}",
            case.proto.name(),
            case.port,
            case.what,
            if case.allowed { "allowed" } else { "forbidden" },
            report.sent[i],
            report.received[i],
            if report.case_ok(i) { "OK" } else { "MISMATCH" }
        );
    }
    println!("{UNITS}");
    println!();
    println!("real protocol peers through portguard:");
    print_peers(&report.peers, 38, 9);
    println!();
    let bad = if let Some(m) = &report.metrics {
        println!("portguard's counters from GET /metrics while the traffic ran:");
        // As the endpoint writes them, sorted.
        let lines: BTreeMap<&str, f64> = m
            .text
            .lines()
            .filter(|l| {
                l.starts_with("portguard_packets_total") || l.starts_with("portguard_drops_total")
            })
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k, v.parse().ok()?))
            })
            .collect();
        for (k, v) in lines {
            println!("   {k} {v}");
        }
        println!("counters against the receivers:");
        for (ok, text) in report.counter_checks() {
            println!("   {} {text}", mark(ok));
        }
        report.mismatches()
    } else {
        println!(
            "note: the metrics endpoint did not answer on {METRICS} in the server namespace; counter checks skipped"
        );
        println!(
            "   {} no XDP program left on {SERVER_IF} after SIGINT",
            mark(report.detached)
        );
        report.mismatches_without_metrics()
    };
    println!();
    println!("portguard's own summary on exit (SIGINT):");
    println!("{}", report.summary.trim_end());
    println!();
    if bad > 0 {
        bail!("{bad} mismatch(es): see above");
    }
    println!(
        "lab: every allowed packet arrived, every forbidden one was dropped, and the counters agree."
    );
    Ok(())
}
