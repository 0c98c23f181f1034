//! Floods over a veth pair between two namespaces: trafgen (one CPU, qdisc
//! bypass, TX_RING) in the sender floods the receiver, whose veth end is
//! guarded by portguard (native XDP), nftables (the exported ruleset) or
//! xdp-filter (native XDP through libxdp's dispatcher). Also the reloads
//! under a flood and the daemon's memory.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::maps::{Map, MapData, PerCpuArray};
use portguard::{
    catalog::Catalog,
    policy::{self, SlotRegistry},
};
use portguard_testsupport::{frames::Packet, spec::lab_spec};
use testkit::{
    netns::{NetNs, addr, ns_exec, run, spawn_in, veth_pair},
    ops::{ALLOWED_PORT, FORBIDDEN_PORT},
};

use crate::{
    perpacket::{allowed_port_flags, set_xdpfilter_ports},
    proc::{self, Proc},
    report::{Report, Target},
    sys,
};

const TX_IP: &str = "198.18.9.1";
const RX_IP: &str = "198.18.9.2";
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";
/// portguard's metrics endpoint, on the receiver namespace's loopback.
const METRICS: &str = "127.0.0.1:19477";

pub struct Lab {
    tx: NetNs,
    rx: NetNs,
    tx_if: String,
    rx_if: String,
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
    tmp: PathBuf,
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let tx = NetNs::new("pgbench-tx")?;
        let rx = NetNs::new("pgbench-rx")?;
        let pid = std::process::id();
        let (tx_if, rx_if) = (format!("pgbt{pid}"), format!("pgbr{pid}"));
        veth_pair(&tx, &tx_if, &rx, &rx_if)?;
        addr(&tx, &tx_if, &format!("{TX_IP}/24"))?;
        addr(&rx, &rx_if, &format!("{RX_IP}/24"))?;
        let tmp = std::env::temp_dir().join(format!("portguard-bench-{pid}"));
        std::fs::create_dir_all(&tmp)?;
        Ok(Lab {
            tx_mac: sys::mac(&tx, &tx_if)?,
            rx_mac: sys::mac(&rx, &rx_if)?,
            tx,
            rx,
            tx_if,
            rx_if,
            tmp,
        })
    }

    fn frame(&self, dport: u16) -> Vec<u8> {
        let mut p = Packet::udp(TX_IP, RX_IP, 40_000, dport).payload(22);
        p.src_mac = self.tx_mac;
        p.dst_mac = self.rx_mac;
        p.build()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn start_portguard(lab: &Lab, catalog: Option<&Path>, extra: &[&str]) -> Result<Proc> {
    let catalog = catalog.map(|c| c.to_string_lossy().into_owned());
    let mut args = vec![
        "run",
        "--iface",
        &lab.rx_if,
        "--role",
        "front-end,client",
        "--client-media-ports",
        "50000-50019",
        "--metrics-addr",
        METRICS,
        "--xdp-mode",
        "native",
        "--clean-start",
    ];
    if let Some(c) = &catalog {
        args.extend(["--catalog", c]);
    }
    args.extend(extra);
    proc::start_portguard(&lab.rx, &args)
}

/// The nft ruleset of the same roles, loaded in the receiver's namespace.
struct Nft<'a>(&'a Lab);

impl<'a> Nft<'a> {
    fn load(lab: &'a Lab) -> Result<Nft<'a>> {
        let out = run(Command::new(testkit::portguard_bin()).args([
            "catalog",
            "export",
            "--format",
            "nft",
            "--role",
            "front-end,client",
        ]))?;
        let file = lab.tmp.join("ruleset.nft");
        std::fs::write(&file, out)?;
        run(&mut ns_exec(
            &lab.rx,
            "nft",
            &["-f", &file.to_string_lossy()],
        ))?;
        Ok(Nft(lab))
    }
}

impl Drop for Nft<'_> {
    fn drop(&mut self) {
        let _ = run(&mut ns_exec(
            &self.0.rx,
            "nft",
            &["delete", "table", "inet", "portguard"],
        ));
    }
}

/// xdp-filter loaded on the receiver in deny policy (only listed ports pass),
/// with every port the portguard policy opens.
struct XdpFilter<'a>(&'a Lab);

impl<'a> XdpFilter<'a> {
    fn load(lab: &'a Lab) -> Result<XdpFilter<'a>> {
        if Path::new(XDP_FILTER_PINS).exists() {
            bail!(
                "{XDP_FILTER_PINS} exists: another xdp-filter is loaded on this host; not touching it"
            );
        }
        let mut cmd = Command::new("xdp-filter");
        cmd.args([
            "load",
            "--policy",
            "deny",
            "--features",
            "tcp,udp",
            "--mode",
            "native",
            &lab.rx_if,
        ]);
        spawn_in(&lab.rx, &mut cmd)?;
        let guard = XdpFilter(lab);
        run(&mut cmd)?;
        let mut map = Map::from_map_data(MapData::from_pin(
            Path::new(XDP_FILTER_PINS).join("filter_ports"),
        )?)?;
        let mut ports: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(&mut map)?;
        let compiled = policy::resolve(&Catalog::embedded(), &lab_spec())
            .and_then(|r| policy::compile(&r, &mut SlotRegistry::default()))?;
        set_xdpfilter_ports(&mut ports, &allowed_port_flags(&compiled))?;
        Ok(guard)
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let mut cmd = Command::new("xdp-filter");
        cmd.args(["unload", &self.0.rx_if]);
        if spawn_in(&self.0.rx, &mut cmd).is_ok() {
            let _ = run(&mut cmd);
        }
    }
}

/// What one flood did, as deltas over the measured window.
#[derive(Clone, Copy, Debug, Default)]
struct Flood {
    secs: f64,
    sent: u64,
    sender_dropped: u64,
    seen: u64,
    passed: u64,
    cpu: sys::Cpu,
}

impl Flood {
    fn dropped(&self) -> u64 {
        self.seen.saturating_sub(self.passed)
    }
    fn pps(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }
}

struct Snap {
    at: Instant,
    cpu: sys::Cpu,
    tx: sys::Link,
    rx: sys::Link,
    udp: u64,
}

fn snap(lab: &Lab) -> Result<Snap> {
    let cpu = sys::cpu()?;
    let at = Instant::now();
    Ok(Snap {
        at,
        cpu,
        tx: sys::link(&lab.tx, &lab.tx_if)?,
        rx: sys::link(&lab.rx, &lab.rx_if)?,
        udp: sys::udp_reached(&lab.rx)?,
    })
}

/// Floods `frames` round robin for about `secs`, calling `during` in the
/// measured window (it may take longer, up to 5 s of flood in all).
fn flood(
    lab: &Lab,
    name: &str,
    frames: &[Vec<u8>],
    secs: f64,
    mut during: impl FnMut() -> Result<()>,
) -> Result<Flood> {
    let mut cfg = String::new();
    for f in frames {
        let bytes: Vec<String> = f.iter().map(|b| format!("0x{b:02x}")).collect();
        let _ = writeln!(cfg, "{{ {} }}", bytes.join(", "));
    }
    let file = lab.tmp.join(format!("{name}.cfg"));
    std::fs::write(&file, cfg)?;
    let mut tg = proc::start_trafgen(&lab.tx, &lab.tx_if, &file)?;
    let a = snap(lab)?;
    let end = a.at + Duration::from_secs_f64(secs);
    during()?;
    let now = Instant::now();
    if now < end {
        std::thread::sleep(end - now);
    }
    // A sender that gave up mid-window would leave a rate that only looks
    // measured.
    tg.check_running()?;
    let b = snap(lab)?;
    tg.stop_group()?;
    // Let the receiver drain before the next measurement.
    std::thread::sleep(Duration::from_millis(100));
    Ok(Flood {
        secs: b.at.duration_since(a.at).as_secs_f64(),
        sent: b.tx.tx_packets - a.tx.tx_packets,
        sender_dropped: (b.tx.tx_dropped - a.tx.tx_dropped) + (b.rx.rx_dropped - a.rx.rx_dropped),
        seen: b.rx.rx_packets - a.rx.rx_packets,
        passed: b.udp - a.udp,
        cpu: b.cpu - a.cpu,
    })
}

fn row(t: &mut String, enforcer: &str, kind: &str, f: &Flood) {
    let handled = f.seen.max(1) as f64;
    let _ = writeln!(
        t,
        "| {enforcer} | {kind} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} |",
        f.pps(f.sent),
        f.pps(f.seen),
        f.pps(f.passed),
        f.pps(f.dropped()),
        f.sender_dropped,
        f.cpu.softirq_ns / handled,
        f.cpu.busy_ns / handled,
    );
}

/// The receivers of the drop-only flood, measured against each other in
/// rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receiver {
    /// portguard as it ships: packet events on, the default budget.
    Portguard,
    PortguardEventsOff,
    Nftables,
    XdpFilter,
}

impl Receiver {
    const ALL: [Receiver; 4] = [
        Receiver::Portguard,
        Receiver::PortguardEventsOff,
        Receiver::Nftables,
        Receiver::XdpFilter,
    ];

    fn label(self) -> &'static str {
        match self {
            Receiver::Portguard => "portguard (events on, the default)",
            Receiver::PortguardEventsOff => "portguard --events-rate 0",
            Receiver::Nftables => "nftables",
            Receiver::XdpFilter => "xdp-filter",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Receiver::Portguard => "pg",
            Receiver::PortguardEventsOff => "pg-events-off",
            Receiver::Nftables => "nft",
            Receiver::XdpFilter => "xf",
        }
    }
}

/// One receiver's drop floods, one per round. Its figure is the round that
/// dropped the most: on the shared CPUs, interference only ever takes
/// packets away, as it only ever adds time to a per-packet round.
#[derive(Default)]
struct Rounds(Vec<Flood>);

impl Rounds {
    fn best(&self) -> Option<&Flood> {
        self.0
            .iter()
            .max_by(|a, b| a.pps(a.dropped()).total_cmp(&b.pps(b.dropped())))
    }

    fn dropped_pps(&self) -> Option<f64> {
        self.best().map(|f| f.pps(f.dropped()))
    }

    fn softirq_ns(&self) -> Option<f64> {
        self.best().map(|f| f.cpu.softirq_ns / f.seen.max(1) as f64)
    }
}

/// Sections 3 (floods), 5 (memory) and 4b (reloads under a flood). The
/// drop-only floods run in `rounds` rounds, the receivers in an order that
/// rotates from round to round; the mixed floods run in the first round,
/// and the daemon's memory is sampled during portguard's.
pub fn run_all(report: &mut Report, secs: f64, rounds: usize, reloads: u32) -> Result<()> {
    let lab = Lab::new()?;
    let allowed = lab.frame(ALLOWED_PORT);
    let forbidden = lab.frame(FORBIDDEN_PORT);
    let drop_only = [forbidden.clone()];
    let mixed = [allowed.clone(), forbidden.clone()];

    let mut t = String::new();
    let _ = writeln!(
        t,
        "| receiver | flood | sent/s | seen by receiver/s | passed/s | dropped/s | lost before the receiver | softirq ns/packet | busy CPU ns/packet |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|");

    // No firewall: what the sender and the stack do alone.
    let f = flood(&lab, "none-drop", &drop_only, secs, || Ok(()))?;
    row(&mut t, "no firewall", "UDP 161 only", &f);

    let mut rss_max = 0;
    let mut maps = Vec::new();
    let mut mixed_rows = String::new();
    let mut by_receiver: [Rounds; 4] = Default::default();
    let mut xdp_filter_failed = false;
    for round in 0..rounds {
        let first = round == 0;
        for k in 0..Receiver::ALL.len() {
            let receiver = Receiver::ALL[(k + round) % Receiver::ALL.len()];
            let name = format!("{}-drop-{round}", receiver.slug());
            let f = match receiver {
                Receiver::Portguard => {
                    let mut pg = start_portguard(&lab, None, &[])?;
                    let pid = pg.child.id();
                    // The daemon's memory, sampled under load.
                    let mut sample = || -> Result<()> {
                        std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
                        rss_max = rss_max.max(sys::rss_kib(pid)?);
                        maps = sys::maps_of(pid)?;
                        Ok(())
                    };
                    // Not during the drop flood: a window that also reads
                    // /proc measures less than the receiver can do.
                    let f = flood(&lab, &name, &drop_only, secs, || Ok(()))?;
                    if first {
                        let m = flood(&lab, "pg-mixed", &mixed, secs, &mut sample)?;
                        row(&mut mixed_rows, "portguard", "50000 + 161 alternating", &m);
                    }
                    pg.stop()?;
                    f
                }
                Receiver::PortguardEventsOff => {
                    let mut pg = start_portguard(&lab, None, &["--events-rate", "0"])?;
                    let f = flood(&lab, &name, &drop_only, secs, || Ok(()))?;
                    pg.stop()?;
                    f
                }
                Receiver::Nftables => {
                    let _nft = Nft::load(&lab)?;
                    let f = flood(&lab, &name, &drop_only, secs, || Ok(()))?;
                    if first {
                        let m = flood(&lab, "nft-mixed", &mixed, secs, || Ok(()))?;
                        row(&mut mixed_rows, "nftables", "50000 + 161 alternating", &m);
                    }
                    f
                }
                Receiver::XdpFilter => match XdpFilter::load(&lab) {
                    Ok(_xf) => {
                        let f = flood(&lab, &name, &drop_only, secs, || Ok(()))?;
                        if first {
                            let m = flood(&lab, "xf-mixed", &mixed, secs, || Ok(()))?;
                            row(&mut mixed_rows, "xdp-filter", "50000 + 161 alternating", &m);
                        }
                        f
                    }
                    Err(e) => {
                        if !xdp_filter_failed {
                            report.failed("flood with xdp-filter", &e);
                            xdp_filter_failed = true;
                        }
                        continue;
                    }
                },
            };
            by_receiver[receiver as usize].0.push(f);
        }
    }
    let mut per_round = String::new();
    for receiver in Receiver::ALL {
        let r = &by_receiver[receiver as usize];
        if let Some(best) = r.best() {
            row(
                &mut t,
                &format!("{}, best of {}", receiver.label(), r.0.len()),
                "UDP 161 only",
                best,
            );
            let all: Vec<String> =
                r.0.iter()
                    .map(|f| format!("{:.0}", f.pps(f.dropped())))
                    .collect();
            let _ = writeln!(
                per_round,
                "- dropped/s in each round, {}: {}",
                receiver.label(),
                all.join(", ")
            );
        }
    }
    t.push_str(&mixed_rows);
    let _ = write!(t, "\n{per_round}");

    let get = |r: Receiver| by_receiver[r as usize].dropped_pps();
    let cost = |r: Receiver| by_receiver[r as usize].softirq_ns();
    let mut ratios = String::new();
    if let (Some(on), Some(off)) = (get(Receiver::Portguard), get(Receiver::PortguardEventsOff))
        && off > 0.0
    {
        let _ = writeln!(
            ratios,
            "- dropped/s, events on (default budget) / events off, best rounds: {:.2}",
            on / off
        );
        report.target(Target::new(
            12,
            "flood: drop rate with events on ≥ 95% of events off",
            format!("{:.0}% ({on:.0} vs {off:.0}/s)", 100.0 * on / off),
            on / off >= 0.95,
        ));
    }
    if let (Some(pg), Some(nft)) = (get(Receiver::Portguard), get(Receiver::Nftables)) {
        let _ = writeln!(
            ratios,
            "- dropped/s, portguard / nftables, best rounds: {:.2}",
            pg / nft
        );
        report.target(Target::new(
            7,
            "flood: portguard drops ≥ 2x nftables' packets/s",
            format!("{:.2}x ({pg:.0} vs {nft:.0}/s)", pg / nft),
            pg / nft >= 2.0,
        ));
    }
    if let (Some(pg), Some(xf)) = (get(Receiver::Portguard), get(Receiver::XdpFilter)) {
        let _ = writeln!(
            ratios,
            "- dropped/s, portguard / xdp-filter, best rounds: {:.2}",
            pg / xf
        );
        report.target(Target::new(
            7,
            "flood: portguard drops no fewer packets/s than xdp-filter",
            format!("{:.2}x ({pg:.0} vs {xf:.0}/s)", pg / xf),
            pg >= xf,
        ));
    }
    if let (Some(pg), Some(nft)) = (cost(Receiver::Portguard), cost(Receiver::Nftables)) {
        let _ = writeln!(
            ratios,
            "- receiver softirq ns per dropped packet, nftables / portguard, best rounds: {:.2}",
            nft / pg
        );
    }
    if let (Some(pg), Some(xf)) = (cost(Receiver::Portguard), cost(Receiver::XdpFilter)) {
        let _ = writeln!(
            ratios,
            "- receiver softirq ns per dropped packet, xdp-filter / portguard, best rounds: {:.2}",
            xf / pg
        );
    }
    let _ = write!(t, "\n{ratios}");
    report.section(
        "3. Flood over veth",
        &format!(
            "trafgen (`-P 1`: one process, TX_RING, qdisc bypass) floods 64-byte UDP frames from one namespace into the other for \
             {secs:.0} s per row. The drop-only floods run in {rounds} rounds, the receivers in an order that rotates \
             from round to round; each receiver's row is its round that dropped the most (interference on the shared CPUs \
             only ever takes packets away), every round's figure is listed under the table, and the ratios and targets \
             use the best rounds. The mixed floods run once, in the first round. The receiver runs `portguard run --role front-end,client --client-media-ports 50000-50019` \
             (native XDP), or the ruleset of `portguard catalog export --format nft --role front-end,client` (input hook, \
             policy drop, conntrack), or `xdp-filter load --policy deny --features tcp,udp` (native XDP through libxdp's \
             dispatcher; it picks xdpfilt_dny_all) with every port the portguard policy opens written into its `filter_ports` \
             map. *seen* is the receiver veth's rx packets, *passed* what reached the receiver's UDP layer (/proc/net/snmp: \
             InDatagrams + NoPorts + InErrors), *dropped* = seen − passed. *lost before the receiver* is the veth ring's \
             drops. CPU columns are /proc/stat deltas over both CPUs (10 ms ticks) divided by packets seen; sender and \
             receiver share the machine's 2 CPUs (the veth receive path runs in softirq on the sending CPU)."
        ),
        t,
    );

    // Memory, from the drop flood.
    let ncpus = aya::util::nr_cpus().map_err(|(w, e)| anyhow::anyhow!("{w}: {e}"))? as u64;
    let memlock: u64 = maps.iter().map(|m| m.memlock).sum();
    let formula: u64 = maps.iter().map(|m| sys::formula_bytes(m, ncpus)).sum();
    let mut t = String::new();
    let _ = writeln!(t, "| what | size |");
    let _ = writeln!(t, "|---|---:|");
    let _ = writeln!(
        t,
        "| daemon VmRSS under the flood | {:.1} MiB |",
        rss_max as f64 / 1024.0
    );
    let _ = writeln!(
        t,
        "| BPF maps held by the daemon ({}), memlock from fdinfo | {:.1} MiB |",
        maps.len(),
        memlock as f64 / 1048576.0
    );
    let _ = writeln!(
        t,
        "| the same maps, (key + value) × max entries, per-CPU × {ncpus} | {:.1} MiB |",
        formula as f64 / 1048576.0
    );
    report.section("5. Memory", "Read from /proc/PID/status and /proc/PID/fdinfo of the running daemon during its mixed flood (section 3; not during the drop floods, whose figures a window that reads /proc would lower).", t);
    report.target(Target::new(
        7,
        "daemon RSS < 30 MiB",
        format!("{:.1} MiB", rss_max as f64 / 1024.0),
        rss_max < 30 * 1024,
    ));

    reload_flood(report, &lab, &allowed, reloads)?;
    Ok(())
}

/// Section 4b: `reloads` SIGHUP reloads while allowed packets flood in;
/// each reload swaps between two catalogs that differ in thousands of entries.
fn reload_flood(report: &mut Report, lab: &Lab, allowed: &[u8], reloads: u32) -> Result<()> {
    let a = Catalog::embedded_text().to_string();
    let b = format!(
        "{a}\n[[rule]]\nrole = \"front-end\"\nservice = \"bench churn\"\nprotocol = \"both\"\nports = \"2000-9999\"\n\
         transport = \"TCP/UDP\"\ntable = \"server\"\nnote = \"added by the benchmark so that each reload rewrites port entries\"\n"
    );
    let file = lab.tmp.join("catalog.toml");
    let write = |text: &str| -> Result<()> {
        let tmp = lab.tmp.join("catalog.toml.new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    };
    write(&a)?;
    let mut pg = start_portguard(lab, Some(&file), &[])?;
    let drops_before = pg_drops(lab)?;
    let mut swap_ms = Vec::new();
    let started = Instant::now();
    let mut reload_secs = 0.0;
    let f = flood(lab, "reload", &[allowed.to_vec()], 0.0, || {
        for k in 0..reloads {
            // B, B, A, A, B, B, …: each reload writes into the generation
            // that holds the other catalog.
            write(if (k / 2) % 2 == 0 { &b } else { &a })?;
            pg.signal(libc::SIGHUP);
            let line = pg.wait_line("reload", Duration::from_secs(10))?;
            if line.contains("rejected") {
                bail!("reload {k} rejected: {line}");
            }
            swap_ms.push(parse_duration_ms(&line).unwrap_or(f64::NAN));
        }
        reload_secs = started.elapsed().as_secs_f64();
        Ok(())
    })?;
    let drops = pg_drops(lab)? - drops_before;
    pg.stop()?;
    let lost = f.seen.saturating_sub(f.passed);
    swap_ms.sort_by(f64::total_cmp);
    let mut t = String::new();
    let _ = writeln!(t, "| what | value |");
    let _ = writeln!(t, "|---|---:|");
    let _ = writeln!(
        t,
        "| reloads (SIGHUP, each waited for) | {} in {reload_secs:.2} s |",
        swap_ms.len()
    );
    let _ = writeln!(
        t,
        "| reload time logged by the daemon (read + compile + install), median / max | {:.1} / {:.1} ms |",
        swap_ms[swap_ms.len() / 2],
        swap_ms.last().copied().unwrap_or(f64::NAN)
    );
    let _ = writeln!(
        t,
        "| allowed packets seen by the receiver during the reloads | {} ({:.0}/s) |",
        f.seen,
        f.pps(f.seen)
    );
    let _ = writeln!(t, "| of them passed to UDP | {} |", f.passed);
    let _ = writeln!(
        t,
        "| packets portguard dropped during the reloads (its drop counters, any reason) | {drops} |"
    );
    let _ = writeln!(
        t,
        "| seen − passed at the receiver (counters read ms apart: ± skew) | {lost} |"
    );
    let _ = writeln!(
        t,
        "| lost before the receiver (veth ring full; no policy involved) | {} |",
        f.sender_dropped
    );
    report.section(
        "4b. Reloads under a flood",
        "portguard runs with `--catalog FILE`; before each SIGHUP the file is replaced (rename) by the embedded catalog or \
         by the embedded catalog plus a front-end rule for TCP+UDP 2000-9999 (in the order B, B, A, A, …, so every install \
         rewrites ~4000 entries of the inactive generation). Only allowed frames (UDP 50000) are sent.",
        t,
    );
    report.target(Target::new(
        7,
        "zero allowed packets lost across reloads",
        format!(
            "{drops} dropped by portguard of {} allowed packets seen, in {} reloads",
            f.seen,
            swap_ms.len()
        ),
        drops == 0 && swap_ms.len() == reloads as usize,
    ));
    Ok(())
}

/// Sum of portguard's drop counters, from its metrics endpoint inside the receiver's namespace.
fn pg_drops(lab: &Lab) -> Result<u64> {
    let body = proc::metrics(&lab.rx, METRICS)?;
    // A family without samples is not printed: no drop line means no drop.
    let total: f64 = proc::samples(&body, "portguard_drops_total")?
        .iter()
        .map(|(_, v)| v)
        .sum();
    Ok(total as u64)
}

/// "… in force (12.345678ms)" → 12.35.
fn parse_duration_ms(line: &str) -> Option<f64> {
    testkit::debug_duration_ms(line.rsplit_once('(')?.1.trim_end_matches(')'))
}
