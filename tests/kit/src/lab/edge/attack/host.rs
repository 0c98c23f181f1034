//! Host mode: portguard on a server's own interface (`--role
//! front-end,client`), the plants against it, and its own idle connections
//! through a spoofed UDP flood it answers (to its open UDP 3478) and a
//! spoofed SYN flood to its SSH guard port, whose SYN-ACKs it records.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    ATTACKERS, Firewall, FloodRow, HOST_SUBNET, Instance, Mode, Options, Report, Wire, attacker,
    counted,
    flood::{self, Flood, Kind, Sources},
    host_peer, host_server,
    idle::{Conn, Speaker, check_all},
    plants, progress,
};
use crate::{
    lab::edge::{FAMILIES, Family},
    lab::{MEDIA, METRICS, ROLES, check_interrupted},
    netns::{NetNs, addr, in_netns, sysctl, veth_pair},
};

/// The host's interface (it names the instance) and its peer's.
pub const HOST_IF: &str = "pgahost0";
const PEER_IF: &str = "pgahpeer0";

/// Frames of the host's floods.
pub const HOST_UDP_FLOOD_V4: u64 = super::V4_SOURCES as u64;
pub const HOST_UDP_FLOOD_V6: u64 = 131_072;
pub const HOST_SYN_FLOOD: u64 = 100_000;

/// The host's open UDP port (the client role's STUN/TURN) and its own
/// connections' local ports: outside every inbound row of its roles, so
/// that only the flow table lets their answers in.
const OPEN_UDP: u16 = 3478;
const OWN_PORT: u16 = 40_200;

pub(super) fn run(opts: &Options<'_>, report: &mut Report) -> Result<()> {
    progress(opts, "host: namespaces");
    let peer = NetNs::new("pg-hpeer")?;
    let host = NetNs::new("pg-host")?;
    for ns in [&peer, &host] {
        sysctl(
            ns,
            &[
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        )?;
    }
    veth_pair(&peer, PEER_IF, &host, HOST_IF)?;
    for family in FAMILIES {
        let (len, v) = match family {
            Family::V4 => (24, "-4"),
            Family::V6 => (64, "-6"),
        };
        addr(&peer, PEER_IF, &format!("{}/{len}", host_peer(family)))?;
        for i in 0..ATTACKERS {
            addr(
                &peer,
                PEER_IF,
                &format!("{}/{len}", attacker(HOST_SUBNET, i, family)),
            )?;
        }
        addr(&host, HOST_IF, &format!("{}/{len}", host_server(family)))?;
        // The floods' answers leave towards the peer, which drops them.
        host.ip(&[
            v,
            "route",
            "add",
            "default",
            "via",
            &host_peer(family).to_string(),
        ])?;
    }
    report
        .namespaces
        .extend([peer.name().to_string(), host.name().to_string()]);
    let wire = Arc::new(Wire::new(&peer, PEER_IF, &host, HOST_IF)?);
    #[rustfmt::skip]
    let args: Vec<String> = [
        "run", "--iface", HOST_IF, "--role", ROLES, "--client-media-ports", MEDIA,
        "--xdp-mode", "native", "--metrics-addr", METRICS,
        // The plants and floods test ports and flows; their datagrams carry
        // text, which the media rules' payload check would refuse.
        "--media-check", "off",
    ]
    .map(String::from)
    .into();
    let mut instance = match opts.firewall {
        Firewall::Portguard => {
            progress(opts, "host: portguard starts");
            Some(Instance::start(
                &host,
                opts.bin,
                args,
                vec![HOST_IF],
                opts.interrupted,
            )?)
        }
        Firewall::Nftables | Firewall::None => None,
    };

    let mut conns = Vec::new();
    if opts.floods && instance.is_some() {
        progress(opts, "host: its own connections open");
        conns = open_conns(&peer, &host)?;
        report.conns.extend(check_all(
            &mut conns,
            Mode::Host,
            "opened (the host first)",
            Speaker::Rule,
        ));
        std::thread::sleep(Duration::from_millis(2200));
        report.conns.extend(check_all(
            &mut conns,
            Mode::Host,
            "2 s later, which confirms the UDP flows",
            Speaker::Rule,
        ));
    }

    progress(opts, "host: plants");
    let env = plants::Env {
        mode: Mode::Host,
        attacker_ns: &peer,
        victim_ns: &host,
        capture_if: HOST_IF,
        wire: &wire,
        subnet: HOST_SUBNET,
        router: None,
    };
    report.plants.extend(plants::run(&env, &plants::HOST)?);
    check_interrupted(opts.interrupted)?;

    let Some(inst) = instance.as_mut() else {
        return Ok(());
    };
    if !opts.floods {
        return Ok(());
    }
    report.conns.extend(check_all(
        &mut conns,
        Mode::Host,
        "after the plants",
        Speaker::Answer,
    ));

    // The host's servers: an echo on its open UDP port, and a listener on
    // the SSH guard's port that the SYN flood fills (the kernel answers
    // each SYN, with a cookie once the queue is full).
    let echo = Echo::start(&host)?;
    let _ssh: Vec<TcpListener> = FAMILIES
        .into_iter()
        .map(|f| {
            let at = SocketAddr::new(host_server(f), 22);
            in_netns(&host, || TcpListener::bind(at))?.with_context(|| format!("binding {at}"))
        })
        .collect::<Result<_>>()?;

    let floods = [
        (
            "spoofed UDP to the host's open 3478, which it answers, IPv4, many sources",
            Flood {
                family: Family::V4,
                sources: Sources::Many,
                kind: Kind::Udp,
                to: SocketAddr::new(host_server(Family::V4), OPEN_UDP),
                frames: HOST_UDP_FLOOD_V4,
                pace: None,
            },
        ),
        (
            "spoofed UDP to the host's open 3478, which it answers, IPv6, many sources",
            Flood {
                family: Family::V6,
                sources: Sources::Many,
                kind: Kind::Udp,
                to: SocketAddr::new(host_server(Family::V6), OPEN_UDP),
                frames: HOST_UDP_FLOOD_V6,
                pace: None,
            },
        ),
        (
            "spoofed SYNs to the host's SSH guard port 22, IPv4, many sources",
            Flood {
                family: Family::V4,
                sources: Sources::Many,
                kind: Kind::Syn,
                to: SocketAddr::new(host_server(Family::V4), 22),
                frames: HOST_SYN_FLOOD,
                pace: None,
            },
        ),
        (
            "spoofed SYNs to the host's SSH guard port 22, IPv6, many sources",
            Flood {
                family: Family::V6,
                sources: Sources::Many,
                kind: Kind::Syn,
                to: SocketAddr::new(host_server(Family::V6), 22),
                frames: HOST_SYN_FLOOD,
                pace: None,
            },
        ),
    ];
    for (name, f) in floods {
        progress(opts, &format!("host: {name}"));
        let proto = if f.kind == Kind::Udp { "udp" } else { "tcp" };
        let (_, before) = inst.stats(&host, opts.bin)?;
        let counted_before = counted(&host, HOST_IF, proto)?;
        let answered_before = echo.answered.load(Ordering::SeqCst);
        let took = flood::start(wire.clone(), f).finish()?;
        std::thread::sleep(Duration::from_millis(300));
        let (_, after) = inst.stats(&host, opts.bin)?;
        let counted_after = counted(&host, HOST_IF, proto)?;
        let answered = echo.answered.load(Ordering::SeqCst) - answered_before;
        report.conns.extend(check_all(
            &mut conns,
            Mode::Host,
            &format!("after: {name}"),
            Speaker::Answer,
        ));
        let row = FloodRow::measured(
            Mode::Host,
            name,
            &f,
            took,
            counted_after.saturating_sub(counted_before),
            (&before, &after),
        );
        if f.kind == Kind::Udp {
            let grown = after
                .unconfirmed
                .entries
                .saturating_sub(before.unconfirmed.entries);
            report.checks.push((
                answered > 0 && grown < 1000,
                format!(
                    "host, {name}: the host answered {answered} datagrams from its open port, and they recorded nothing (unconfirmed entries grew by {grown})"
                ),
            ));
        } else {
            report.checks.push((
                row.unconfirmed_evictions > 0,
                format!(
                    "host, {name}: the host's SYN-ACKs from the guard port turned the unconfirmed table over ({} evictions)",
                    row.unconfirmed_evictions
                ),
            ));
        }
        report.checks.push(row.confirmed_stayed());
        report.floods.push(row);
        check_interrupted(opts.interrupted)?;
    }
    drop(echo);
    let (summary, detached) = inst.stop(&host)?;
    report.checks.push((
        detached,
        format!("no XDP program left on {HOST_IF} after SIGINT"),
    ));
    if summary.is_empty() {
        report.checks.push((
            false,
            "the host's portguard printed no summary on SIGINT".into(),
        ));
    }
    drop(instance.take());
    Ok(())
}

/// The host's own connections, per family: TCP from its port to the peer's
/// 5061, both ends of a UDP flow from its port to the peer's 5000, and a
/// second TCP connection to the peer's 443, so that the host's table holds
/// [`IDLE_FLOWS`] confirmed entries as the appliance's does.
fn open_conns(peer: &NetNs, host: &NetNs) -> Result<Vec<Conn>> {
    let mut conns = Vec::new();
    for (k, family) in FAMILIES.into_iter().enumerate() {
        let port = OWN_PORT + 10 * k as u16;
        for (n, remote_port) in [5061u16, 443].into_iter().enumerate() {
            let at = SocketAddr::new(host_peer(family), remote_port);
            let listener = in_netns(peer, || TcpListener::bind(at))?
                .with_context(|| format!("binding {at}"))?;
            conns.push(Conn::tcp(
                format!("TCP host -> peer {remote_port} ({})", family.name()),
                ("the host", "its peer"),
                host,
                SocketAddr::new(host_server(family), port + n as u16),
                &listener,
            )?);
        }
        conns.push(Conn::udp(
            format!("UDP host {} <-> peer 5000 ({})", port + 5, family.name()),
            ("the host", "its peer"),
            (host, SocketAddr::new(host_server(family), port + 5)),
            (peer, SocketAddr::new(host_peer(family), 5000)),
        )?);
    }
    Ok(conns)
}

/// An echo on the host's open UDP port, both families: it answers every
/// datagram it reads, as a STUN server would.
struct Echo {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    fn start(host: &NetNs) -> Result<Echo> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for family in FAMILIES {
            let at = SocketAddr::new(host_server(family), OPEN_UDP);
            let sock = in_netns(host, || UdpSocket::bind(at))?
                .with_context(|| format!("binding the echo at {at}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(20)))?;
            let (stop, answered) = (stop.clone(), answered.clone());
            // The socket lives in the host's namespace; its thread can run anywhere.
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf)
                        && sock.send_to(&buf[..n], from).is_ok()
                    {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        Ok(Echo {
            stop,
            answered,
            threads,
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
