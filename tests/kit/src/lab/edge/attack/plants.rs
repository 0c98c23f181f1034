//! The plants: frames an attacker on the outside sends so that the firewall
//! would take what it sends next for an answer, then what it sends next,
//! at a listener on the target. Each case has its own attacker address, so
//! the cases of one batch run side by side and are told apart at the
//! listeners and in the capture on the target's interface.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use super::{Mode, PlantRow, Wire, attacker, host_server, no_profile};
use crate::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, L4, Packet, TCP_ACK, TCP_SYN},
    lab::edge::{FAMILIES, Family, Host, Legs},
    lab::{
        Proto,
        send::{datagrams, listen},
    },
    netns::{NetNs, sysctl, thread_in},
    sockets::{Capture, Counter, connect_from},
};

/// What the plant frame looks like on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Plain,
    /// A wrong IPv4 header checksum (IPv6 has none), to a unicast MAC that
    /// is not the firewall's: the kernel drops it, whatever XDP did.
    BadChecksumForeignMac,
    /// Broadcast, under an 802.1ad and an 802.1Q tag for VLANs no interface
    /// of the box has: the kernel drops it too.
    QinQBroadcast,
}

/// The address a case attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    AccessEdge,
    AvEdge,
    /// A DMZ address in no profile.
    NoProfile,
    /// The host of the host-mode part.
    Server,
}

impl Target {
    fn ip(self, family: Family) -> IpAddr {
        match self {
            Target::AccessEdge => Host::AccessEdge.ip(family),
            Target::AvEdge => Host::AvEdge.ip(family),
            Target::NoProfile => no_profile(family),
            Target::Server => host_server(family),
        }
    }
}

/// One plant.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub target: Target,
    /// The target's port the attacker wants open.
    pub port: u16,
    /// The attacker's port: the destination port of an outbound row (or,
    /// on a host, of an inbound one), so that the plant frame itself
    /// passes XDP's rule lookup where it can.
    pub via: u16,
    pub proto: Proto,
    pub shape: Shape,
    /// The appliance's rp_filter while the case runs.
    pub rp_filter: Option<u8>,
    /// The frames are the attack: a profiled source (the Access Edge)
    /// arriving on the internet leg, to `target:port` directly.
    pub relay: bool,
    /// IPv4 only (a header checksum).
    pub v4_only: bool,
}

/// The appliance's reverse-path filtering unless a case says otherwise:
/// loose, systemd's default.
const LOOSE: u8 = 2;

const fn case(name: &'static str, target: Target, port: u16, via: u16, proto: Proto) -> Case {
    Case {
        name,
        target,
        port,
        via,
        proto,
        shape: Shape::Plain,
        rp_filter: Some(LOOSE),
        relay: false,
        v4_only: false,
    }
}

/// The plants of the issue against the appliance. Loose reverse-path
/// filtering (2, systemd's default) unless the case says otherwise: the
/// kernel then forwards a frame whose source is reachable by any route,
/// so a spoofed Edge source on the internet leg is hairpinned back out.
pub(super) const APPLIANCE: [Case; 12] = {
    use Proto::{Tcp, Udp};
    use Target::{AccessEdge, AvEdge, NoProfile};
    [
        case(
            "Access Edge 161 -> A:53 (access-edge outbound UDP 53)",
            AccessEdge,
            161,
            53,
            Udp,
        ),
        case("Access Edge 123 -> A:53 (NTP)", AccessEdge, 123, 53, Udp),
        case(
            "Access Edge 5060 -> A:53 (SIP over UDP)",
            AccessEdge,
            5060,
            53,
            Udp,
        ),
        case(
            "A/V Edge 161 -> A:3478 (av-edge outbound UDP 3478)",
            AvEdge,
            161,
            3478,
            Udp,
        ),
        case(
            "A/V Edge 5353 -> A:50010 (av-edge outbound 50000-59999)",
            AvEdge,
            5353,
            50_010,
            Udp,
        ),
        Case {
            rp_filter: Some(0),
            ..case(
                "Access Edge 161 -> A:53, rp_filter=0",
                AccessEdge,
                161,
                53,
                Udp,
            )
        },
        Case {
            rp_filter: Some(1),
            ..case(
                "Access Edge 161 -> A:53, rp_filter=1 (strict)",
                AccessEdge,
                161,
                53,
                Udp,
            )
        },
        Case {
            shape: Shape::BadChecksumForeignMac,
            ..case(
                "Access Edge 161 -> A:53, bad IPv4 checksum / foreign MAC",
                AccessEdge,
                161,
                53,
                Udp,
            )
        },
        Case {
            shape: Shape::QinQBroadcast,
            ..case(
                "Access Edge 161 -> A:53, QinQ broadcast (VLANs 100/200)",
                AccessEdge,
                161,
                53,
                Udp,
            )
        },
        case(
            "TCP: SYN Access Edge 22 -> A:5061, then A's ACK/data/FIN to 22",
            AccessEdge,
            22,
            5061,
            Tcp,
        ),
        Case {
            relay: true,
            ..case(
                "Access Edge source on the internet leg -> no-profile UDP 53",
                NoProfile,
                53,
                53,
                Udp,
            )
        },
        Case {
            relay: true,
            ..case(
                "Access Edge source on the internet leg -> no-profile TCP 5061",
                NoProfile,
                5061,
                5061,
                Tcp,
            )
        },
    ]
};

/// The same plants against a host (`--role front-end,client`): the frames
/// claim the host's own address. UDP 3478 and TCP 5061 are inbound rows
/// there, so the plant frame to A's 3478 or 5061 passes XDP (a host's rows
/// apply to every destination) and only the kernel drops it.
pub(super) const HOST: [Case; 5] = {
    use Proto::{Tcp, Udp};
    use Target::Server;
    const fn host(c: Case) -> Case {
        Case {
            rp_filter: None,
            ..c
        }
    }
    [
        host(case("host 161 -> A:53", Server, 161, 53, Udp)),
        host(case(
            "host 161 -> A:3478 (an inbound row: XDP passes the plant)",
            Server,
            161,
            3478,
            Udp,
        )),
        host(Case {
            shape: Shape::BadChecksumForeignMac,
            ..case(
                "host 161 -> A:3478, bad IPv4 checksum / foreign MAC",
                Server,
                161,
                3478,
                Udp,
            )
        }),
        host(Case {
            shape: Shape::QinQBroadcast,
            ..case(
                "host 161 -> A:3478, QinQ broadcast (VLANs 100/200)",
                Server,
                161,
                3478,
                Udp,
            )
        }),
        host(case(
            "TCP: SYN host 3389 -> A:5061, then A's ACK/data/FIN to 3389",
            Server,
            3389,
            5061,
            Tcp,
        )),
    ]
};

/// Datagrams the attacker sends at the target after a UDP plant.
const FOLLOW_UP: u32 = 20;
/// A unicast MAC no interface of the lab has.
const FOREIGN_MAC: [u8; 6] = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
const BROADCAST: [u8; 6] = [0xff; 6];

/// Where the plants run.
pub(super) struct Env<'a> {
    pub mode: Mode,
    pub attacker_ns: &'a NetNs,
    pub victim_ns: &'a NetNs,
    /// The target's interface, in `victim_ns`, for the capture.
    pub capture_if: &'static str,
    /// From the attacker's namespace towards the firewall.
    pub wire: &'a Wire,
    /// The attackers' subnet (see [`attacker`]).
    pub subnet: u8,
    /// The appliance, whose rp_filter each batch sets.
    pub router: Option<(&'a NetNs, Legs)>,
}

/// Runs `cases` in both families, a batch per rp_filter setting (the cases
/// of a batch side by side).
pub(super) fn run(env: &Env<'_>, cases: &[Case]) -> Result<Vec<PlantRow>> {
    let mut settings: Vec<Option<u8>> = Vec::new();
    for c in cases {
        if !settings.contains(&c.rp_filter) {
            settings.push(c.rp_filter);
        }
    }
    let mut rows = Vec::new();
    for setting in settings {
        if let (Some(rp), Some((ns, legs))) = (setting, env.router) {
            set_rp_filter(ns, legs, rp)?;
        }
        let batch: Vec<(usize, &Case)> = cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.rp_filter == setting)
            .collect();
        rows.extend(batch_run(env, &batch)?);
    }
    // Back to the scenario's own setting for what follows.
    if let Some((ns, legs)) = env.router {
        set_rp_filter(ns, legs, LOOSE)?;
    }
    Ok(rows)
}

/// `rp_filter` on every interface of the appliance (the kernel applies the
/// larger of `all` and the interface's own).
fn set_rp_filter(ns: &NetNs, legs: Legs, value: u8) -> Result<()> {
    let v = value.to_string();
    let keys = [
        "net.ipv4.conf.all.rp_filter".to_string(),
        "net.ipv4.conf.default.rp_filter".to_string(),
        format!("net.ipv4.conf.{}.rp_filter", legs.ext),
        format!("net.ipv4.conf.{}.rp_filter", legs.dmz),
    ];
    let settings: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), v.as_str())).collect();
    sysctl(ns, &settings)
}

/// One case in one family, ready to run.
struct Shot<'a> {
    case: &'a Case,
    family: Family,
    attacker: IpAddr,
    target: SocketAddr,
    /// Whose frames the target counts: the attacker, or for a relay the
    /// profiled address it claims.
    source: IpAddr,
}

fn batch_run(env: &Env<'_>, batch: &[(usize, &Case)]) -> Result<Vec<PlantRow>> {
    let mut shots = Vec::new();
    for family in FAMILIES {
        for (i, c) in batch {
            if c.v4_only && family == Family::V6 {
                continue;
            }
            let attacker = attacker(env.subnet, *i, family);
            shots.push(Shot {
                case: c,
                family,
                attacker,
                target: SocketAddr::new(c.target.ip(family), c.port),
                source: if c.relay {
                    Host::AccessEdge.ip(family)
                } else {
                    attacker
                },
            });
        }
    }
    // A listener per target, shared by the cases that aim at it.
    let mut listeners: BTreeMap<(SocketAddr, Proto), Counter> = BTreeMap::new();
    for s in &shots {
        let key = (s.target, s.case.proto);
        if listeners.contains_key(&key) {
            continue;
        }
        listeners.insert(key, listen(env.victim_ns, s.case.proto, s.target)?);
    }
    let capture = Capture::start(env.victim_ns, env.capture_if)?;

    // The plants, then a moment for the kernel to forward and record
    // whatever it will, then what the attackers send through the hoped-for
    // openings (the relays' frames are the attack itself).
    for s in shots.iter().filter(|s| !s.case.relay) {
        env.wire.send(&[plant_frame(env, s)])?;
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut threads: Vec<JoinHandle<std::io::Result<u32>>> = Vec::new();
    for s in &shots {
        let sent = follow_up(env, s)?;
        threads.push(sent);
    }
    let sent: Vec<u32> = threads
        .into_iter()
        .map(|h| h.join().ok().and_then(Result::ok).unwrap_or(0))
        .collect();
    // Let the last packets land.
    std::thread::sleep(Duration::from_millis(300));
    let rows = shots
        .iter()
        .zip(sent)
        .map(|(s, sent)| {
            let listener = listeners
                .get(&(s.target, s.case.proto))
                .map_or(0, |l| l.count_from(s.source));
            let proto = match s.case.proto {
                Proto::Tcp => 6,
                Proto::Udp => 17,
            };
            let captured = capture.count(|seen| {
                seen.src == s.source
                    && seen.dst == s.target.ip()
                    && seen.proto == proto
                    && seen.dport == s.target.port()
            });
            PlantRow {
                mode: env.mode,
                family: s.family,
                case: s.case.name,
                // rp_filter is IPv4's alone: an IPv6 row repeats its base case.
                rp_filter: s
                    .case
                    .rp_filter
                    .filter(|_| env.router.is_some() && s.family == Family::V4),
                attacker: s.attacker,
                proto: s.case.proto,
                target: s.target.to_string(),
                sent,
                listener,
                captured,
            }
        })
        .collect();
    Ok(rows)
}

/// The plant: a frame from the target's port to the attacker's, as the
/// target would send it (a datagram, or a SYN).
fn plant_frame(env: &Env<'_>, s: &Shot<'_>) -> Vec<u8> {
    let p = match s.case.proto {
        Proto::Udp => Packet::new(
            s.target.ip(),
            s.attacker,
            L4::Udp {
                sport: s.target.port(),
                dport: s.case.via,
            },
        )
        .payload(8),
        Proto::Tcp => Packet::new(
            s.target.ip(),
            s.attacker,
            L4::Tcp {
                sport: s.target.port(),
                dport: s.case.via,
                flags: TCP_SYN,
            },
        ),
    };
    match s.case.shape {
        Shape::Plain => env.wire.frame(p),
        Shape::BadChecksumForeignMac => {
            let mut f = env.wire.frame_to(p, FOREIGN_MAC);
            if s.family == Family::V4 {
                // The IPv4 header checksum, right after the Ethernet header.
                f[14 + 10] ^= 0x5a;
            }
            f
        }
        Shape::QinQBroadcast => env
            .wire
            .frame_to(p.vlan(ETH_P_8021AD, 100).vlan(ETH_P_8021Q, 200), BROADCAST),
    }
}

/// What the attacker sends after the plant, on a thread of its own: UDP
/// from a real socket on its `via` port; for TCP, segments that are not a
/// SYN (what a planted answer entry would let through) and a real
/// connection attempt from `via`; for a relay, the spoofed frames
/// themselves. Returns the datagrams or segments sent.
fn follow_up(env: &Env<'_>, s: &Shot<'_>) -> Result<JoinHandle<std::io::Result<u32>>> {
    let (c, target, attacker) = (*s.case, s.target, s.attacker);
    if c.relay {
        let frames: Vec<Vec<u8>> = match c.proto {
            Proto::Udp => (0..FOLLOW_UP)
                .map(|i| {
                    let sport = 40_000 + i as u16;
                    env.wire.frame(
                        Packet::new(
                            s.source,
                            target.ip(),
                            L4::Udp {
                                sport,
                                dport: target.port(),
                            },
                        )
                        .payload(16),
                    )
                })
                .collect(),
            Proto::Tcp => (0..3)
                .map(|i| {
                    env.wire.frame(Packet::new(
                        s.source,
                        target.ip(),
                        L4::Tcp {
                            sport: 41_000 + i,
                            dport: target.port(),
                            flags: TCP_SYN,
                        },
                    ))
                })
                .collect(),
        };
        env.wire.send(&frames)?;
        let n = frames.len() as u32;
        return Ok(std::thread::spawn(move || Ok(n)));
    }
    match c.proto {
        Proto::Udp => Ok(thread_in(env.attacker_ns, move || {
            let Ok(sock) = UdpSocket::bind(SocketAddr::new(attacker, c.via)) else {
                return 0;
            };
            datagrams(&sock, target, FOLLOW_UP, Duration::from_millis(1), |i| {
                format!("after the plant {i}").into_bytes()
            })
        })?),
        Proto::Tcp => {
            let segments: Vec<Vec<u8>> = [TCP_ACK, TCP_ACK | 0x08, TCP_ACK | 0x01]
                .iter()
                .flat_map(|&flags| {
                    let p = Packet::new(
                        attacker,
                        target.ip(),
                        L4::Tcp {
                            sport: c.via,
                            dport: target.port(),
                            flags,
                        },
                    )
                    .payload(if flags & 0x08 != 0 { 16 } else { 0 });
                    let f = env.wire.frame(p);
                    [f.clone(), f]
                })
                .collect();
            env.wire.send(&segments)?;
            let n = segments.len() as u32;
            Ok(thread_in(env.attacker_ns, move || {
                // A SYN is never an answer, so this fails behind a firewall;
                // without one it connects and the listener counts it.
                if let Ok(mut conn) = connect_from(
                    SocketAddr::new(attacker, c.via),
                    target,
                    Duration::from_secs(1),
                ) {
                    let _ = conn.write_all(b"after the plant\n");
                }
                n + 1
            })?)
        }
    }
}
