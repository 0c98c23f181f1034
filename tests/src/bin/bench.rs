//! `cargo xtask bench`: portguard next to the floor (an empty XDP program;
//! an empty TC program for the egress recorder) and its peers (xdp-filter,
//! nftables), all measured in one run, printed as markdown with the issues'
//! targets judged from it, and written to docs/benchmarks.md (unless
//! `--no-write`).
//!
//! `--quick`: fewer repeats and shorter floods, a smoke test of the bench
//! itself; its figures are not the ones to quote.

#[path = "bench/appliance.rs"]
mod appliance;
#[path = "bench/egress.rs"]
mod egress;
#[path = "bench/flood.rs"]
mod flood;
#[path = "bench/live.rs"]
mod live;
#[path = "bench/perpacket.rs"]
mod perpacket;
#[path = "bench/proc.rs"]
mod proc;
#[path = "bench/rawprog.rs"]
mod rawprog;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/synflood.rs"]
mod synflood;
#[path = "bench/sys.rs"]
mod sys;
#[path = "bench/targets.rs"]
mod targets;

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use report::Report;

/// Repeats per per-packet case: the kernel loops in place, so timer
/// overhead is amortised over this many runs.
const REPEAT: u32 = 10_000_000;
/// Interleaved rounds the per-packet repeats are split into (a few ms per
/// case each); each case's figure is its fastest round.
const PER_PACKET_ROUNDS: u32 = 50;
/// Rounds of the drop-only floods (3 s each per receiver); each receiver's
/// figure is its best round.
const FLOOD_ROUNDS: usize = 3;
/// SYNs each flood of section 7 brings through the router: more than four
/// times portguard's unconfirmed flow table, and more than conntrack's
/// default maximum (262,144 on a 64-bit machine with more than 4 GiB; the
/// section reports the one in force), so that both turn over.
const SYN_FLOOD: u64 = 300_000;
/// Rounds of section 7 (every router once per round).
const SYN_FLOOD_ROUNDS: usize = 2;
/// Frames per live-frames case: passed frames cost an skb each (about a
/// microsecond on a 2-CPU VM), so fewer than the in-place repeats.
const LIVE_FRAMES: u32 = 2_000_000;

const HEADER: &str = "\
# Benchmarks

Written by `cargo xtask bench` (tests/src/bin/bench.rs); every figure below
comes from the one run described under *Machine*. Re-run it to refresh.
What each per-packet row runs through: [packet-path.md](packet-path.md);
how the path got here: CHANGELOG.md, *History of the packet path*.

Method, in short:

- **Per packet**: `BPF_PROG_TEST_RUN` of each program on one 64-byte frame,
  10 million repeats per case, split into 50 interleaved rounds of a few ms
  each. A round's ns/packet is the CPU time of the thread that ran its
  repeats (the kernel loops in its context) over their number: preemption
  excluded, and finer than the kernel's own figure, which is whole ns
  (printed as a cross-check). A case's figure is its fastest round:
  interference only adds time, and on a shared VM whole stretches of
  rounds run up to twice as slow (a neighbour on the host), which a mean
  or a median would mix in by chance. The *floor* is an XDP
  program that only returns `XDP_PASS`: what the test harness itself costs
  per packet. The kernel runs the same frame again and again, so the maps'
  cache lines stay hot: this is the cost of the instructions, not of cache
  misses. xdp-filter is Debian's compiled object (xdp-tools), loaded with
  aya, its `filter_ports` map set to the same ports. Every case checks the
  action it returns, so a figure is always of the intended path. portguard
  also runs in appliance mode (the same roles behind the box by `--profile`
  and on its own address): a forwarded packet, a packet to the box.
- **Egress recorder**: the TC program `portguard_egress` the same way, in
  the same rounds, on a flow it has already recorded (an RTP datagram, a TCP
  ACK), next to an empty TC program that only returns `TC_ACT_OK` (two
  instructions the bench loads itself). The flow is proven established
  first: XDP passes its reply as `established` on a port it otherwise drops.
- **Live frames**: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`
  (Linux >= 5.18): the kernel makes real frames in batches and acts on the
  verdict, on a veth in a namespace the bench makes. Mpps per core is frames
  over the CPU time of the thread that ran them; no sender shares the CPU.
- **Scaling**: the same, with generated catalogs of 10 to 10,000 rules.
- **Flood**: trafgen on one CPU floods a veth pair between two network
  namespaces; the receiver is guarded by portguard, nftables or xdp-filter.
  On a 2-CPU machine the sender and the receiver share the CPUs, so packets
  per second measure the sender and the receiver together; the receiver's
  softirq time per packet isolates the receiver's cost. The drop floods run
  in 3 rounds, the receivers in a rotating order, and each receiver's figure
  is its best round: a single 3 s flood per receiver gave portguard against
  nftables 2.38x in one full run and 1.42x in the next.
- **Reload** and **memory**: wall time of `Classifier::install`, reloads by
  SIGHUP under a flood of allowed packets, and the daemon's RSS and map sizes.
- **SYN flood through the appliance**: a router namespace between an
  internet side and a DMZ server with a TCP listener on 5061 (the Access
  Edge's port); trafgen floods SYNs from random spoofed sources to it while
  idle connections wait, through no filter, an empty XDP program, portguard
  in appliance mode and nftables with conntrack in turn: SYNs forwarded per
  second, and whether each idle connection still carries data both ways
  afterwards (the server speaking first) and new connections open during it.

**Targets** are judged from the figures of this one run, never written by
hand; the *issue* column names the issue that set each. Issue 14's: on each
of the four packets (allowed, dropped, VLAN-tagged, IPv6), portguard's ns
above the floor at most 1.5x xdp-filter `dny_udp`'s ns above the floor on
the same packet; the allowed IPv4 packet at most 1.3x the floor; the egress
recorder at most 1.5x the empty TC program, on the RTP datagram and on the
TCP ACK. Issue 11's: a forwarded allowed packet (appliance mode) costs no
more than host mode's local allowed packet. Issue 22's: through a spoofed
SYN flood to an allowed port, the appliance keeps every established
connection (its forwarded SYNs per second beside nftables').

Reading the figures: xdp-filter's `dny_udp` object (deny policy, UDP only)
does one array lookup on the destination port; it parses VLAN tags and IPv6
extension headers (each run asks the object, and section 1 says what it
answered). It is the leanest allow-list xdp-filter has, but cannot enforce a
catalog with TCP rules. `dny_all` is what `xdp-filter load --policy deny
--features tcp,udp` actually loads (it adds Ethernet and IP hash lookups).
Both are reported; the targets say which one they use.
The flood's packets per second are bounded by the single sender CPU it
shares with the receiver, and the machine may be shared with other work
(see the load average): the receiver's softirq ns per packet is the figure
least disturbed by either.
";

/// `--only`: one part of the bench alone (nothing is written: a partial
/// run is not the record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Only {
    /// Sections 1 and 2, for A/B work on the packet path.
    PerPacket,
    /// Section 7, the SYN flood through the appliance.
    SynFlood,
}

struct Opts {
    quick: bool,
    write: bool,
    out: PathBuf,
    only: Option<Only>,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        write: true,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md"),
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-write" => o.write = false,
            "--only" => {
                o.only = Some(match args.next().as_deref() {
                    Some("per-packet") => Only::PerPacket,
                    Some("synflood") => Only::SynFlood,
                    other => bail!("--only takes `per-packet` or `synflood`, not {other:?}"),
                });
                o.write = false;
            }
            "--out" => {
                o.out = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| anyhow::anyhow!("--out needs a path"))?
            }
            "-h" | "--help" => {
                println!(
                    "bench [--quick] [--no-write] [--out FILE] [--only per-packet|synflood]\n  --quick     fewer repeats and 1 s floods (smoke test)\n  --no-write  print only; do not write docs/benchmarks.md\n  --only per-packet\n              the per-packet and scaling sections alone (A/B work; writes nothing)\n  --only synflood\n              the SYN flood through the appliance alone (writes nothing)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = opts()?;
    if !testkit::require_privileges("bench") {
        bail!("the benchmark needs root (BPF, network namespaces, XDP)");
    }
    let machine = sys::machine();
    println!("{machine}");
    let (repeat, live_frames, rounds, live_rounds, secs, flood_rounds, swaps) = if o.quick {
        (1_000_000, 200_000, 10, 2, 1.0, 1, 6)
    } else {
        (
            REPEAT,
            LIVE_FRAMES,
            PER_PACKET_ROUNDS,
            5,
            3.0,
            FLOOD_ROUNDS,
            21,
        )
    };
    let (syn_flood, syn_rounds) = if o.quick {
        (100_000, 1)
    } else {
        (SYN_FLOOD, SYN_FLOOD_ROUNDS)
    };
    let repeat = std::env::var("PORTGUARD_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(repeat);
    let reloads = 100;
    let started = Instant::now();
    let mut report = Report::default();
    if o.only != Some(Only::SynFlood)
        && let Err(e) = perpacket::run(&mut report, repeat, rounds)
    {
        report.failed("per packet and scaling", &e);
    }
    if o.only.is_none() {
        if let Err(e) = perpacket::reload_swap(&mut report, swaps) {
            report.failed("reload swap time", &e);
        }
        if let Err(e) = flood::run_all(&mut report, secs, flood_rounds, reloads) {
            report.failed("floods, reloads under a flood, memory", &e);
        }
        if let Err(e) = live::run(&mut report, live_frames, live_rounds) {
            report.failed("live frames", &e);
        }
    }
    if o.only != Some(Only::PerPacket)
        && let Err(e) = synflood::run(&mut report, secs, syn_flood, syn_rounds)
    {
        report.failed("SYN flood through the appliance", &e);
    }
    let total = started.elapsed().as_secs_f64();
    let run = format!(
        "- run: {}{repeat} repeats per per-packet case, {live_frames} live frames per case, {secs:.0} s floods, {reloads} reloads; the whole bench took {total:.0} s",
        if o.quick {
            "**--quick (smoke test, do not quote)**, "
        } else {
            ""
        }
    );
    println!("## Targets\n\n{}", report.targets_table());
    println!("{run}");
    if o.write {
        std::fs::write(&o.out, report.markdown(HEADER, &machine, &run))?;
        println!("wrote {}", o.out.display());
    }
    if report.has_failures() {
        bail!("some parts of the benchmark could not run (see above)");
    }
    Ok(())
}
