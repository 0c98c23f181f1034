//! The attack scenario: the edge lab's topology (internet, appliance with
//! portguard on both legs, DMZ) and a host pair, under the attacks of issue
//! 22, with real sockets and listeners.
//!
//! - **Plants** ([`plants`]): frames from the internet that claim an Edge
//!   Server's address and port, so that what the attacker sends next would
//!   pass as their answer; every shape the issue found (UDP and TCP,
//!   several ports, IPv6, rp_filter 0/loose/strict, a bad IPv4 checksum to
//!   a foreign MAC, a QinQ broadcast, a profiled source on the wrong leg).
//!   Each must leave its port closed: a listener on the target and a
//!   capture on the target's interface see nothing from the attacker.
//! - **Floods** ([`flood`]): spoofed SYNs from hundreds of thousands of
//!   sources (IPv4 and IPv6) and from one source with random ports, while
//!   idle connections ([`idle`]: TCP each way, IPv4 and IPv6, and a UDP flow
//!   the A/V Edge opened) wait, and new connections open during the flood.
//!   Afterwards each idle connection carries a message each way, the
//!   answering side first (so an evicted entry would show).
//! - **Fragments**: first fragments from many sources to a closed port and
//!   from one source to an allowed port, while 4,000-byte datagrams cross
//!   an MTU of 1,280.
//! - **kill -9, `run --clean-start`**: the idle connections resume once the
//!   side a rule passes speaks.
//! - **Host mode** ([`host`]): plants against a host, and its own idle
//!   connections through a spoofed UDP flood it answers and a SYN flood to
//!   its SSH guard port.
//!
//! [`appliance`] runs the first four, in that order, on the appliance.
//!
//! The same engine runs the appliance's plants with nftables in
//! portguard's place (its own `catalog export --format nft --appliance`,
//! with its `fib` reverse-path check), and every plant with no
//! firewall (the lab's own check: every plant's traffic then arrives). `cargo xtask
//! run -- --scenario attack` prints it; the `lab` test binary's `attack::`
//! tests assert on it.

mod appliance;
mod flood;
mod host;
mod idle;
mod plants;
mod report;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use self::{
    flood::V4_SOURCES,
    host::{HOST_IF, HOST_SYN_FLOOD, HOST_UDP_FLOOD_V4, HOST_UDP_FLOOD_V6},
    plants::{Case as PlantCase, Shape, Target},
    report::{ConnRow, FloodRow, FlowStats, FragmentRow, Mode, PlantRow, Report, TableFill},
};
use super::{DMZ_HOST_IF, FAMILIES, Family, INET_IF, Legs, Topology};
use crate::{
    frames::Packet,
    lab::{
        check_interrupted,
        daemon::{Daemon, detached},
        metrics::{self, Scrape},
    },
    netns::{NetNs, addr, mac_of, spawn_in, sysctl},
    ops::forget_iface,
    sockets::RawSender,
};

/// The appliance's legs in this scenario: its own names, so that it can run
/// beside the edge lab (an instance's lock and pins are keyed by them).
pub const EXT_LEG: &str = "pgaext0";
pub const DMZ_LEG: &str = "pgadmz0";
const LEGS: Legs = Legs {
    ext: EXT_LEG,
    dmz: DMZ_LEG,
};

/// What protects the appliance (and the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    Portguard,
    /// The ruleset `portguard catalog export --format nft --appliance`
    /// writes for the same profiles (conntrack for the answers): the
    /// appliance's plants only.
    Nftables,
    /// Nothing: the plants only, each of which must then get through.
    None,
}

impl Firewall {
    pub fn name(self) -> &'static str {
        match self {
            Firewall::Portguard => "portguard",
            Firewall::Nftables => "nftables (catalog export --appliance)",
            Firewall::None => "no firewall",
        }
    }
}

/// Options of one run.
pub struct Options<'a> {
    /// The portguard binary (for nftables, the one that exports the ruleset).
    pub bin: &'a Path,
    pub firewall: Firewall,
    pub interrupted: &'a AtomicBool,
    /// The floods, the fragments and the restart too (portguard only);
    /// otherwise the plants alone.
    pub floods: bool,
    /// A line on stdout as each part starts.
    pub progress: bool,
}

/// The idle connections and flows whose entries the floods must not push
/// out: two TCP connections and one UDP flow per family.
pub const IDLE_FLOWS: u64 = 6;

/// Frames of each flood. The IPv4 many-source flood walks all of
/// [`V4_SOURCES`] twice (no source address and port twice).
pub const SYN_FLOOD_V4: u64 = 2 * V4_SOURCES as u64;
pub const SYN_FLOOD_V6: u64 = 262_144;
pub const ONE_SOURCE_FLOOD: u64 = 100_000;
pub const FRAGMENT_FLOOD: u64 = 100_000;
pub const ONE_SOURCE_FRAGMENTS: u64 = 4_000;
/// Frames per second of the one-source fragment flood.
pub const ONE_SOURCE_FRAGMENT_RATE: u32 = 20_000;
/// Legitimate fragmented datagrams: their size, and the internet link's MTU.
pub const BIG_DATAGRAM: usize = 4000;
pub const INTERNET_MTU: u32 = 1280;

/// Runs the scenario once: the appliance, then the host. Every guard
/// (namespaces, portguard, sockets) is dropped on return, on any path.
pub fn run(opts: &Options<'_>) -> Result<Report> {
    let began = Instant::now();
    let mut report = Report::new(opts.firewall);
    appliance::run(opts, &mut report)?;
    check_interrupted(opts.interrupted)?;
    if matches!(opts.firewall, Firewall::Portguard | Firewall::None) {
        host::run(opts, &mut report)?;
    }
    report.duration = began.elapsed();
    Ok(report)
}

/// The plants each mode runs (each in IPv4 and IPv6, unless `v4_only`).
pub fn plant_cases(mode: Mode) -> &'static [PlantCase] {
    match mode {
        Mode::Appliance => &plants::APPLIANCE,
        Mode::Host => &plants::HOST,
    }
}

fn progress(opts: &Options<'_>, what: &str) {
    if opts.progress {
        println!("   .. {what}");
    }
}

/// An attacker's own address: 198.18.SUBNET.(100 + i), 2001:db8:SUBNET::(100 + i).
fn attacker(subnet: u8, i: usize, family: Family) -> IpAddr {
    let i = u8::try_from(i).unwrap_or(u8::MAX).min(150);
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, subnet, 100 + i)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(subnet),
            0,
            0,
            0,
            0,
            0x100 + u16::from(i),
        )),
    }
}

/// Attackers per namespace: one per case.
const ATTACKERS: usize = 16;

/// A DMZ address in no profile.
fn no_profile(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 2, 99)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x99)),
    }
}

/// The host of the host-mode part, and its peer on the outside.
const HOST_SUBNET: u8 = 9;
fn host_server(family: Family) -> IpAddr {
    host_address(family, 2)
}
fn host_peer(family: Family) -> IpAddr {
    host_address(family, 1)
}
fn host_address(family: Family, n: u8) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, HOST_SUBNET, n)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(HOST_SUBNET),
            0,
            0,
            0,
            0,
            u16::from(n),
        )),
    }
}

/// Raw frames from one namespace's interface to its peer: the sender, and
/// the MACs that make a frame look as the kernel would send it.
pub(super) struct Wire {
    tx: RawSender,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Wire {
    fn new(ns: &NetNs, ifname: &str, peer_ns: &NetNs, peer_if: &str) -> Result<Wire> {
        Ok(Wire {
            tx: RawSender::new(ns, ifname)?,
            src_mac: mac_of(ns, ifname)?,
            dst_mac: mac_of(peer_ns, peer_if)?,
        })
    }

    /// `p` as a frame to the peer's MAC.
    fn frame(&self, p: Packet) -> Vec<u8> {
        self.frame_to(p, self.dst_mac)
    }

    fn frame_to(&self, mut p: Packet, dst_mac: [u8; 6]) -> Vec<u8> {
        p.src_mac = self.src_mac;
        p.dst_mac = dst_mac;
        p.build()
    }

    fn send(&self, frames: &[Vec<u8>]) -> Result<()> {
        self.tx.send_batch(frames).context("sending raw frames")
    }
}

/// portguard as a child in a namespace (the network namespace only: its
/// pins are on the host's bpffs, so that `portguard stats` reads them and
/// a `kill -9` leaves the program attached, as on a real box). On drop it
/// gets SIGINT, and what it left under the bpffs and /run goes.
struct Instance {
    daemon: Option<Daemon>,
    args: Vec<String>,
    /// The interfaces; the first names the instance.
    legs: Vec<&'static str>,
}

impl Instance {
    fn start(
        ns: &NetNs,
        bin: &Path,
        args: Vec<String>,
        legs: Vec<&'static str>,
        interrupted: &AtomicBool,
    ) -> Result<Instance> {
        for leg in &legs {
            forget_iface(leg);
        }
        let mut i = Instance {
            daemon: None,
            args,
            legs,
        };
        i.spawn(ns, bin, &[], interrupted)?;
        Ok(i)
    }

    fn spawn(
        &mut self,
        ns: &NetNs,
        bin: &Path,
        extra: &[&str],
        interrupted: &AtomicBool,
    ) -> Result<()> {
        let mut cmd = Command::new(bin);
        cmd.args(&self.args).args(extra);
        spawn_in(ns, &mut cmd)?;
        let mut d = Daemon::spawn(cmd)?;
        d.wait_attached(ns, &self.legs, interrupted)?;
        self.daemon = Some(d);
        metrics::wait_answering(ns, Duration::from_secs(15), interrupted)
    }

    /// SIGKILL, and reaped: the pinned program stays attached.
    fn kill9(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.child.kill().context("kill -9 portguard")?;
            d.child.wait()?;
        }
        Ok(())
    }

    /// `portguard stats --iface PRIMARY` in `ns`.
    fn stats(&self, ns: &NetNs, bin: &Path) -> Result<(String, FlowStats)> {
        let mut cmd = Command::new(bin);
        cmd.args(["stats", "--iface", self.legs[0]]);
        spawn_in(ns, &mut cmd)?;
        let out = cmd.output().context("running portguard stats")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "portguard stats failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let figures = FlowStats::parse(&text)
            .with_context(|| format!("no flow tables in portguard stats:\n{text}"))?;
        Ok((text, figures))
    }

    /// SIGINT; its summary, and whether every leg is free of XDP after.
    fn stop(&mut self, ns: &NetNs) -> Result<(String, bool)> {
        let Some(mut d) = self.daemon.take() else {
            return Ok((String::new(), false));
        };
        let (summary, _log) = d.stop(Duration::from_secs(10))?;
        Ok((summary, detached(ns, &self.legs)?))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        drop(self.daemon.take());
        for leg in &self.legs {
            forget_iface(leg);
        }
    }
}

fn scrape(ns: &NetNs) -> Result<Scrape> {
    metrics::scrape(ns)
}

/// Packets of `proto` portguard counted on `iface`, every verdict.
fn counted(ns: &NetNs, iface: &str, proto: &str) -> Result<u64> {
    Ok(scrape(ns)?.sum(
        "portguard_packets_total",
        &[("iface", iface), ("proto", proto)],
    ) as u64)
}

/// Later fragments portguard dropped as orphans on the internet leg.
fn orphans(ns: &NetNs) -> Result<u64> {
    Ok(scrape(ns)?.sum(
        "portguard_packets_total",
        &[("iface", EXT_LEG), ("service", "fragment_orphan")],
    ) as u64)
}

/// `nft -f -` with `ruleset`, in `ns`.
fn nft(ns: &NetNs, ruleset: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut child = crate::netns::ns_exec(ns, "nft", &["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting nft")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(ruleset)?;
    let done = child.wait_with_output()?;
    if !done.status.success() {
        bail!(
            "nft rejected the ruleset: {}\n{}",
            String::from_utf8_lossy(&done.stderr),
            String::from_utf8_lossy(ruleset)
        );
    }
    Ok(())
}

/// Loads `portguard catalog export --format nft ARGS` into `ns`.
fn load_export(ns: &NetNs, bin: &Path, args: &[String]) -> Result<()> {
    let out = Command::new(bin)
        .args(["catalog", "export", "--format", "nft"])
        .args(args)
        .output()
        .context("portguard catalog export")?;
    if !out.status.success() {
        bail!(
            "catalog export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    nft(ns, &out.stdout)
}

/// What the scenario adds to the edge lab's topology: an address per
/// attacker, an address in no profile in the DMZ, routes back to the
/// floods' sources, the internet link's MTU, and kernel settings.
fn prepare(topo: &Topology) -> Result<()> {
    for family in FAMILIES {
        let len = if family == Family::V4 { 24 } else { 64 };
        for i in 0..ATTACKERS {
            addr(
                &topo.internet,
                INET_IF,
                &format!("{}/{len}", attacker(1, i, family)),
            )?;
        }
        addr(
            &topo.dmz,
            DMZ_HOST_IF,
            &format!("{}/{len}", no_profile(family)),
        )?;
    }
    // The floods' sources are routed back to the internet leg, so that the
    // answers to them leave as they would on a real box (and are dropped
    // in the internet namespace, which does not forward).
    topo.appliance
        .ip(&["-4", "route", "add", "198.18.0.0/15", "via", "198.18.1.2"])?;
    topo.appliance.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8::/32",
        "via",
        "2001:db8:1::2",
    ])?;
    let mtu = INTERNET_MTU.to_string();
    topo.internet.ip(&["link", "set", INET_IF, "mtu", &mtu])?;
    topo.appliance
        .ip(&["link", "set", topo.legs.ext, "mtu", &mtu])?;
    sysctl(
        &topo.dmz,
        &[
            // The relays' frames claim the Access Edge's address, which is
            // one of the DMZ namespace's own: without these its kernel
            // drops them as martians, and the no-firewall run could not
            // show that they would arrive.
            ("net.ipv4.conf.all.accept_local", "1"),
            (&format!("net.ipv4.conf.{DMZ_HOST_IF}.accept_local"), "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            (&format!("net.ipv4.conf.{DMZ_HOST_IF}.rp_filter"), "0"),
            // The one-source fragment flood's first fragments pass (they
            // are to an allowed port) and wait in the DMZ's reassembly;
            // its default 4 MB would then drop the legitimate datagrams'
            // fragments in the Edge's own kernel, which is not what the
            // scenario measures.
            ("net.ipv4.ipfrag_high_thresh", "134217728"),
            ("net.ipv6.ip6frag_high_thresh", "134217728"),
        ],
    )?;
    Ok(())
}
