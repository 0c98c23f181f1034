//! Kernel-generated traffic: `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux >= 5.18). The kernel builds real
//! frames from a page pool in batches and acts on each verdict: a drop
//! recycles the page, a pass builds an skb and hands it to the stack of the
//! ingress interface. No sender competes for the CPU, so packets per second
//! of CPU time are the receiver's alone.
//!
//! The ingress interface is one end of a veth pair in a namespace the bench
//! makes (and deletes): the passed frames go up that namespace's stack. They
//! are addressed to a MAC that is not the veth's, so the stack drops them as
//! not for this host before the IP layer counts them (checked: the
//! namespace's `Ip: InReceives` does not grow by them), the cheapest stack
//! path there is: the pass rows are the program, an skb and that early drop.

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, BorrowedFd},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use classifier_common::COUNTER_ENTRIES;
use portguard::{
    catalog::Catalog,
    loader::Classifier,
    policy::{self, SlotRegistry},
};
use portguard_testsupport::{
    frames::Packet,
    kernel::{XDP_DROP, XDP_PASS},
    spec::lab_spec,
};
use testkit::{
    netns::{NetNs, in_netns, mac_of, veth_pair},
    ops::{ALLOWED_PORT, FORBIDDEN_PORT},
};

use crate::{
    perpacket::{XdpFilterObject, allowed_port_flags, floor_xdp, load_floor},
    rawprog::{self, RawFloors},
    report::Report,
    sys,
};

/// `BPF_F_TEST_XDP_LIVE_FRAMES` (linux/bpf.h).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per batch: the kernel's default (NAPI_POLL_WEIGHT), made explicit.
const BATCH: u32 = 64;

/// `struct xdp_md` as `ctx_in`: the frame spans the whole buffer and comes in
/// on `ingress_ifindex`, queue 0.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    fn bytes(&self) -> Vec<u8> {
        [
            self.data,
            self.data_end,
            self.data_meta,
            self.ingress_ifindex,
            self.rx_queue_index,
            self.egress_ifindex,
        ]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
    }
}

struct Case<'a> {
    name: &'static str,
    prog: BorrowedFd<'a>,
    frame: Vec<u8>,
    expect: u32,
    cpu_ns: f64,
    kernel_ns: f64,
    runs: u32,
    frames: u64,
}

impl Case<'_> {
    fn cpu_per_frame(&self) -> f64 {
        self.cpu_ns / self.frames as f64
    }
}

/// Runs every case in interleaved rounds inside the bench namespace.
fn measure(
    ns: &NetNs,
    ifname: &str,
    cases: &mut [Case<'_>],
    repeat: u32,
    rounds: u32,
) -> Result<()> {
    let per_round = repeat.div_ceil(rounds);
    in_netns(ns, || -> Result<()> {
        let name = std::ffi::CString::new(ifname).context("interface name")?;
        // SAFETY: a valid NUL-terminated name; this thread is in `ns`.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("{ifname}: no such interface in {}", ns.name());
        }
        for c in cases.iter() {
            let ctx = XdpMd {
                data: 0,
                data_end: c.frame.len() as u32,
                data_meta: 0,
                ingress_ifindex: ifindex,
                rx_queue_index: 0,
                egress_ifindex: 0,
            }
            .bytes();
            // Live frames report no verdict: one ordinary run on the same
            // frame and context proves the path first.
            let out = rawprog::test_run(c.prog, &c.frame, &ctx, 1, 0, 0)
                .with_context(|| format!("{}: BPF_PROG_TEST_RUN", c.name))?;
            if out.retval != c.expect {
                bail!(
                    "{} returned {}, expected {}: the bench would measure the wrong path",
                    c.name,
                    out.retval,
                    c.expect
                );
            }
        }
        for _ in 0..rounds {
            for c in cases.iter_mut() {
                let ctx = XdpMd {
                    data: 0,
                    data_end: c.frame.len() as u32,
                    data_meta: 0,
                    ingress_ifindex: ifindex,
                    rx_queue_index: 0,
                    egress_ifindex: 0,
                }
                .bytes();
                let t0 = sys::thread_cpu_ns()?;
                let out = rawprog::test_run(
                    c.prog,
                    &c.frame,
                    &ctx,
                    per_round,
                    BPF_F_TEST_XDP_LIVE_FRAMES,
                    BATCH,
                )
                .with_context(|| {
                    format!(
                        "{}: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (Linux >= 5.18)",
                        c.name
                    )
                })?;
                c.cpu_ns += sys::thread_cpu_ns()? - t0;
                c.kernel_ns += f64::from(out.duration_ns);
                c.runs += 1;
                c.frames += u64::from(per_round);
            }
        }
        Ok(())
    })?
}

/// Packets portguard counted, all counters, all CPUs.
fn counted(pg: &mut Classifier) -> Result<u64> {
    Ok(pg
        .counters(0..COUNTER_ENTRIES)?
        .iter()
        .map(|(_, c)| c.packets)
        .sum())
}

pub fn run(report: &mut Report, repeat: u32, rounds: u32) -> Result<()> {
    let ns = NetNs::new("pgbench-live")?;
    let pid = std::process::id();
    let (ifname, peer) = (format!("pglv{pid}"), format!("pglp{pid}"));
    veth_pair(&ns, &ifname, &ns, &peer)?;

    let floor_obj = load_floor()?;
    let raw = RawFloors::load()?;
    let mut registry = SlotRegistry::default();
    let compiled = policy::resolve(&Catalog::embedded(), &lab_spec())
        .and_then(|r| policy::compile(&r, &mut registry))?;
    let mut pg = Classifier::load(None)?;
    pg.install(&compiled, 1)?;
    let dny_udp = XdpFilterObject::load("xdpfilt_dny_udp", &allowed_port_flags(&compiled))?;

    let frame = |dport| {
        Packet::udp("198.18.0.1", "198.18.0.2", 40_000, dport)
            .payload(22)
            .build()
    };
    let (allowed, dropped) = (frame(ALLOWED_PORT), frame(FORBIDDEN_PORT));
    let veth_mac = mac_of(&ns, &ifname)?;
    if allowed[..6] == veth_mac {
        bail!("the frames' destination MAC is {ifname}'s own: passed frames would be delivered");
    }

    let floor_fd = floor_xdp(&floor_obj)?.fd()?.as_fd();
    // A duplicate of the program's fd: reading its counters needs `pg` mutably.
    let pg_dup = pg
        .xdp_ref()?
        .fd()?
        .as_fd()
        .try_clone_to_owned()
        .context("dup of portguard's program fd")?;
    let pg_fd = pg_dup.as_fd();
    let xf_fd = dny_udp.xdp()?.fd()?.as_fd();
    let case = |name, prog, frame: &Vec<u8>, expect| Case {
        name,
        prog,
        frame: frame.clone(),
        expect,
        cpu_ns: 0.0,
        kernel_ns: 0.0,
        runs: 0,
        frames: 0,
    };
    let mut cases = vec![
        case(
            "empty program returning XDP_DROP (drop floor), UDP 161",
            raw.xdp_drop.as_fd(),
            &dropped,
            XDP_DROP,
        ),
        case("portguard, dropped UDP 161", pg_fd, &dropped, XDP_DROP),
        case(
            "xdp-filter dny_udp, dropped UDP 161",
            xf_fd,
            &dropped,
            XDP_DROP,
        ),
        case(
            "empty XDP program (pass floor), UDP 50000",
            floor_fd,
            &allowed,
            XDP_PASS,
        ),
        case("portguard, allowed UDP 50000", pg_fd, &allowed, XDP_PASS),
        case(
            "xdp-filter dny_udp, allowed UDP 50000",
            xf_fd,
            &allowed,
            XDP_PASS,
        ),
    ];

    let pg_before = counted(&mut pg)?;
    let ip_before = sys::ip_in_receives(&ns)?;
    let started = Instant::now();
    measure(&ns, &ifname, &mut cases, repeat, rounds)?;
    let elapsed = started.elapsed();
    let ip_received = sys::ip_in_receives(&ns)? - ip_before;
    let passed: u64 = cases
        .iter()
        .filter(|c| c.expect == XDP_PASS)
        .map(|c| c.frames + 1)
        .sum();
    // Any other packet of the namespace's own would be a handful; frames
    // delivered to IP would be counted by the hundred thousand.
    if ip_received * 100 >= passed {
        bail!(
            "the namespace's IP layer received {ip_received} packets while {passed} frames passed: they were not dropped as for another host, so the pass rows would measure more of the stack than they say"
        );
    }
    // Every live frame went through the program: its counters say so.
    let pg_frames: u64 = cases
        .iter()
        .filter(|c| c.name.starts_with("portguard"))
        .map(|c| c.frames + 1)
        .sum();
    let pg_counted = counted(&mut pg)? - pg_before;
    if pg_counted != pg_frames {
        bail!(
            "portguard counted {pg_counted} packets, but {pg_frames} frames were run through it: live frames did not reach the program"
        );
    }

    let floor_of = |c: &Case<'_>| {
        let floor = if c.expect == XDP_DROP {
            &cases[0]
        } else {
            &cases[3]
        };
        floor.cpu_per_frame()
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| program and frame | Mpps per core | CPU ns/frame | x floor of the same verdict | kernel's ns/frame |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|");
    for c in &cases {
        let cpu = c.cpu_per_frame();
        let _ = writeln!(
            t,
            "| {} | {:.2} | {cpu:.1} | {:.2} | {:.1} |",
            c.name,
            1e3 / cpu,
            cpu / floor_of(c),
            c.kernel_ns / f64::from(c.runs)
        );
    }
    // Cases 1, 2 (drops) and 4, 5 (passes): portguard and dny_udp.
    let above = |i: usize| cases[i].cpu_per_frame() - floor_of(&cases[i]);
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "- CPU ns above the floor of the same verdict: dropped, portguard {:.1} and dny_udp {:.1}; allowed, portguard {:.1} and dny_udp {:.1}",
        above(1),
        above(2),
        above(4),
        above(5)
    );
    report.section(
        "6. Live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES)",
        &format!(
            "The kernel generates the frames: {} per case in {rounds} interleaved rounds, batches of {BATCH}, 64-byte UDP \
             frames arriving on one end of a veth pair in a namespace the bench made ({:.1} s for all cases). Dropped \
             frames are recycled into the page pool; passed frames become skbs and go up that namespace's stack, which \
             drops them at the IP layer (they are addressed to another host's MAC), so the pass rows include an skb and \
             that early drop (the namespace's IP layer received {ip_received} packets meanwhile). *Mpps per core* and *CPU ns/frame* are frames over the CPU time of the thread that ran \
             them (the kernel works in its context); *x floor* divides by the empty program of the same verdict \
             (`XDP_DROP` for drops, `XDP_PASS` for passes). The kernel's own ns/frame (wall time between batches, \
             without preemption) is shown next to it. portguard's counters grew by exactly the {pg_frames} frames \
             run through it, and every case's verdict was checked with an ordinary run first. The thread's CPU time also holds \
             each call's setup (a page pool for the frames), spread over the frames of one round.",
            cases[0].frames,
            elapsed.as_secs_f64()
        ),
        t,
    );
    Ok(())
}
