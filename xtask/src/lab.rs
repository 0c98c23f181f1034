//! `cargo xtask run`: the lab demo (engine in `testkit::lab`), or portguard
//! on a real interface.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};
use testkit::lab::{self, CASES, MEDIA, METRICS, ROLES};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// `cargo xtask run -- --iface IF --role R …`: portguard on a real interface.
pub fn real_interface(args: &[String]) -> Result<()> {
    let status = Command::new(crate::portguard_bin()).arg("run").args(args).status().context("starting portguard")?;
    if !status.success() {
        bail!("portguard run exited with {status}");
    }
    Ok(())
}

pub fn demo() -> Result<()> {
    // Ctrl-C reaches portguard too (same process group): it detaches; the
    // lab notices, stops, and its namespace guards clean up.
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    println!("== portguard lab: client ns <-veth-> server ns, portguard --role {ROLES} --client-media-ports {MEDIA}");
    let bin = crate::portguard_bin();
    let report = lab::run(&lab::Options { bin: &bin, interrupted: &INTERRUPTED, peers: true, live: true })?;
    println!("   {} 198.18.0.1 / 2001:db8::1  <->  {} 198.18.0.2 / 2001:db8::2 (metrics on {METRICS} inside)", report.client, report.server);
    println!();
    println!("{:<6} {:>6}  {:<46} {:<9} {:>5} {:>9}  RESULT", "PROTO", "PORT", "WHAT", "EXPECTED", "SENT", "RECEIVED");
    for (i, case) in CASES.iter().enumerate() {
        println!(
            "{:<6} {:>6}  {:<46} {:<9} {:>5} {:>9}  {}",
            case.proto.name(),
            case.port,
            case.what,
            if case.allowed { "allowed" } else { "forbidden" },
            report.sent[i],
            report.received[i],
            if report.case_ok(i) { "ok" } else { "MISMATCH" }
        );
    }
    println!();
    println!("real protocol peers through portguard:");
    for p in &report.peers {
        println!("   {} {:<38} {:<9} {}", if p.ok { "ok      " } else { "MISMATCH" }, p.name, p.target, p.detail);
    }
    println!();
    if let Some(m) = &report.metrics {
        println!("portguard counters from /metrics (passes by rule, drops by reason):");
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("portguard_packets_total") || k.starts_with("portguard_drops_total")) {
            println!("   {k} {v}");
        }
    }
    println!("counters against the receivers:");
    for (ok, text) in report.counter_checks() {
        println!("   {} {text}", if ok { "ok      " } else { "MISMATCH" });
    }
    println!();
    println!("portguard's own summary on exit:");
    println!("{}", report.summary);
    let bad = report.mismatches();
    if bad > 0 {
        bail!("{bad} mismatch(es): see above");
    }
    println!("lab: every allowed packet arrived, every forbidden one was dropped, and the counters agree.");
    Ok(())
}
