//! A reference classifier in plain Rust, written from the packet policy as
//! documented (docs/packet-policy.md, docs/architecture.md), not from the eBPF
//! parser: the differential and corpus tests hold the kernel program to it.
//!
//! It parses the whole frame as a slice into a small summary first, then
//! decides; it never shares code with `classifier-ebpf`. Its answer is what
//! the XDP program must answer: whether the frame passes and which
//! `COUNTERS` entry it is counted under (a rule slot, or a reason entry).

use std::collections::{HashMap, HashSet};

use classifier_common::{
    Addr, FLAG_DROP_ECHO, FLAG_DROP_IPSEC_MEDIA, FLAG_MONITOR, PCLASS_ICMP, PCLASS_OTHER,
    PCLASS_TCP, PCLASS_UDP, PROFILE_NONE, PROTO_TCP, PROTO_UDP, Reason, Verdict,
    reason_counter_index,
};

use portguard::policy::{CompiledPolicy, Prefix};

/// How many VLAN tags are parsed; one more is `vlan_depth`.
pub const VLAN_TAGS: usize = 2;
/// How many IPv6 extension headers are walked; one more is `ext_headers`.
pub const EXT_HEADERS: usize = 6;

/// One fragmented datagram: (source, destination, identification, protocol).
pub type FragId = (Addr, Addr, u32, u8);

/// A connection the host opened, from its side:
/// (remote address, local address, remote port, local port, IP protocol).
pub type Flow = (Addr, Addr, u16, u16, u8);

/// What the reference remembers between frames.
#[derive(Clone, Debug, Default)]
pub struct RefState {
    /// Passed first fragments' outcomes, replayed for the rest of their
    /// datagram (a dropped first fragment is not remembered).
    pub fragments: HashMap<FragId, (bool, u32)>,
    /// Flows the egress recorder would have seen.
    pub flows: HashSet<Flow>,
    /// How many times a passed first fragment's outcome was written (new or
    /// overwritten): each write takes an LRU node in the kernel.
    pub fragment_writes: u64,
    /// How many later fragments found their first fragment's outcome.
    pub fragment_replays: u64,
}

/// A decision: pass or not, and the counter index.
pub type Answer = (bool, u32);

/// Classifies one frame as portguard's XDP program must.
pub fn classify(frame: &[u8], policy: &CompiledPolicy, state: &mut RefState) -> Answer {
    let d = Decider { policy };
    let net = match network(frame) {
        Net::Stop(reason, verdict_pass) => {
            return if verdict_pass {
                d.pass(reason, PCLASS_OTHER)
            } else {
                d.deny(reason, PCLASS_OTHER)
            };
        }
        Net::Ip(ip) => ip,
    };
    if let Some(id) = net.later_fragment {
        // No transport header here: follow the first fragment, or drop.
        return match state.fragments.get(&(net.src, net.dst, id, net.proto)) {
            Some(answer) => {
                state.fragment_replays += 1;
                *answer
            }
            None => d.deny(Reason::FragmentOrphan, pclass(net.proto)),
        };
    }
    let answer = d.transport(frame, &net, state);
    if let Some((id, proto)) = net.first_fragment.filter(|_| answer.0) {
        state
            .fragments
            .insert((net.src, net.dst, id, proto), answer);
        state.fragment_writes += 1;
    }
    answer
}

/// The network layer of a frame, as far as the policy needs it.
#[derive(Debug)]
struct Ip {
    v6: bool,
    src: Addr,
    dst: Addr,
    /// The upper-layer protocol (after every extension header walked).
    proto: u8,
    /// Where the upper-layer header starts in the frame.
    l4: usize,
    /// Where the IP packet ends in the frame (what follows is padding).
    end: usize,
    /// A fragment with offset 0: its identification and the protocol its
    /// outcome is remembered under.
    first_fragment: Option<(u32, u8)>,
    /// A fragment with a non-zero offset: its identification.
    later_fragment: Option<u32>,
}

enum Net {
    Ip(Ip),
    /// Decided before the transport: reason, and whether it passes.
    Stop(Reason, bool),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mapped(v4: &[u8]) -> Addr {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(v4);
    a
}

fn network(frame: &[u8]) -> Net {
    let Some(mut ethertype) = u16_at(frame, 12) else {
        return Net::Stop(Reason::Malformed, false);
    };
    let mut at = 14;
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88A8 {
        if tags == VLAN_TAGS {
            return Net::Stop(Reason::VlanDepth, false);
        }
        // TCI (2 bytes) then the next ethertype.
        if frame.len() < at + 4 {
            return Net::Stop(Reason::Malformed, false);
        }
        ethertype = u16::from_be_bytes([frame[at + 2], frame[at + 3]]);
        at += 4;
        tags += 1;
    }
    let parsed = match ethertype {
        0x0806 => return Net::Stop(Reason::Arp, true),
        0x0800 => ipv4(&frame[at..]),
        0x86DD => ipv6(&frame[at..]),
        _ => return Net::Stop(Reason::NonIp, true),
    };
    match parsed {
        Ok(mut ip) => {
            ip.l4 += at;
            ip.end += at;
            Net::Ip(ip)
        }
        Err(reason) => Net::Stop(reason, false),
    }
}

/// `p` starts at the IPv4 header.
fn ipv4(p: &[u8]) -> Result<Ip, Reason> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let header_len = usize::from(p[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if header_len < 20 || header_len > p.len() || total_len < header_len || total_len > p.len() {
        return Err(Reason::Malformed);
    }
    let id = u32::from(u16::from_be_bytes([p[4], p[5]]));
    let flags_offset = u16::from_be_bytes([p[6], p[7]]);
    let offset = flags_offset & 0x1fff;
    let more = flags_offset & 0x2000 != 0;
    let proto = p[9];
    Ok(Ip {
        v6: false,
        src: mapped(&p[12..16]),
        dst: mapped(&p[16..20]),
        proto,
        l4: header_len,
        end: total_len,
        first_fragment: (offset == 0 && more).then_some((id, proto)),
        later_fragment: (offset != 0).then_some(id),
    })
}

/// `p` starts at the IPv6 header.
fn ipv6(p: &[u8]) -> Result<Ip, Reason> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    if 40 + payload_len > p.len() {
        return Err(Reason::Malformed);
    }
    // Extension headers are read from the packet, not from padding after it.
    let p = &p[..40 + payload_len];
    let mut src = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&p[24..40]);
    let mut ip = Ip {
        v6: true,
        src,
        dst,
        proto: p[6],
        l4: 40,
        end: 40 + payload_len,
        first_fragment: None,
        later_fragment: None,
    };
    let mut fragment_id = None;
    let mut walked = 0;
    // Hop-by-hop (0), routing (43), fragment (44), destination options (60).
    while matches!(ip.proto, 0 | 43 | 44 | 60) {
        if walked == EXT_HEADERS {
            return Err(Reason::ExtHeaders);
        }
        walked += 1;
        // Every extension header has at least 8 bytes.
        let Some(h) = p.get(ip.l4..ip.l4 + 8) else {
            return Err(Reason::Malformed);
        };
        let next = h[0];
        if ip.proto == 44 {
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
            ip.l4 += 8;
            ip.proto = next;
            if offset != 0 {
                // The rest of the chain is in the first fragment only.
                ip.later_fragment = Some(id);
                return Ok(ip);
            }
            fragment_id = Some((id, next));
        } else {
            ip.l4 += (usize::from(h[1]) + 1) * 8;
            ip.proto = next;
        }
    }
    // A chain whose last header runs past the payload is malformed.
    if ip.l4 > p.len() {
        return Err(Reason::Malformed);
    }
    // A first fragment is remembered under the fragment header's next
    // header: that is what its later fragments carry.
    ip.first_fragment = fragment_id;
    Ok(ip)
}

fn pclass(proto: u8) -> u32 {
    match proto {
        6 => PCLASS_TCP,
        17 => PCLASS_UDP,
        1 | 58 => PCLASS_ICMP,
        _ => PCLASS_OTHER,
    }
}

struct Decider<'a> {
    policy: &'a CompiledPolicy,
}

impl Decider<'_> {
    fn flag(&self, f: u32) -> bool {
        self.policy.flags & f != 0
    }

    fn pass(&self, reason: Reason, pclass: u32) -> Answer {
        (
            true,
            reason_counter_index(reason as u32, Verdict::Pass as u32, pclass),
        )
    }

    fn deny(&self, reason: Reason, pclass: u32) -> Answer {
        if self.flag(FLAG_MONITOR) {
            (
                true,
                reason_counter_index(reason as u32, Verdict::WouldDrop as u32, pclass),
            )
        } else {
            (
                false,
                reason_counter_index(reason as u32, Verdict::Drop as u32, pclass),
            )
        }
    }

    fn ipsec(&self, pclass: u32) -> Answer {
        if self.flag(FLAG_DROP_IPSEC_MEDIA) {
            self.deny(Reason::IpsecOnMediaPath, pclass)
        } else {
            self.pass(Reason::IpsecOnMediaPath, pclass)
        }
    }

    /// Longest `--profile` prefix containing `dst`, else the default profile.
    fn profile(&self, dst: &Addr) -> u32 {
        let host = Prefix {
            addr: *dst,
            len: 128,
        };
        let mut best: Option<(u8, u32)> = None;
        for (prefix, profile) in &self.policy.prefixes {
            if prefix.contains(&host) && best.is_none_or(|(len, _)| prefix.len > len) {
                best = Some((prefix.len, *profile));
            }
        }
        best.map_or(self.policy.default_profile, |(_, p)| p)
    }

    fn media(&self, dst: &Addr) -> bool {
        let p = self.profile(dst);
        p < 32 && self.policy.media_profiles & (1 << p) != 0
    }

    fn transport(&self, frame: &[u8], ip: &Ip, state: &RefState) -> Answer {
        // The transport header must lie inside the IP packet.
        let l4 = frame.get(ip.l4..ip.end).unwrap_or(&[]);
        match (ip.proto, ip.v6) {
            (6, _) if l4.len() >= 20 => self.ports(ip, state, PROTO_TCP, l4, l4[13]),
            (6, _) => self.deny(Reason::Malformed, PCLASS_TCP),
            (17, _) if l4.len() >= 8 => self.ports(ip, state, PROTO_UDP, l4, 0),
            (17, _) => self.deny(Reason::Malformed, PCLASS_UDP),
            (1, false) | (58, true) if l4.len() < 4 => self.deny(Reason::Malformed, PCLASS_ICMP),
            (1, false) => self.icmp4(l4[0]),
            (58, true) => self.icmp6(l4[0]),
            // ESP and AH towards a host on a media path.
            (50 | 51, _) if self.media(&ip.dst) => self.ipsec(PCLASS_OTHER),
            _ => self.deny(Reason::ProtoNotAllowed, PCLASS_OTHER),
        }
    }

    fn echo(&self, request: bool) -> Answer {
        if request && self.flag(FLAG_DROP_ECHO) {
            self.deny(Reason::Echo, PCLASS_ICMP)
        } else {
            self.pass(Reason::Echo, PCLASS_ICMP)
        }
    }

    fn icmp4(&self, icmp_type: u8) -> Answer {
        match icmp_type {
            // Unreachable (with fragmentation needed), time exceeded, parameter problem.
            3 | 11 | 12 => self.pass(Reason::Icmp, PCLASS_ICMP),
            0 => self.echo(false),
            8 => self.echo(true),
            _ => self.deny(Reason::IcmpType, PCLASS_ICMP),
        }
    }

    fn icmp6(&self, icmp_type: u8) -> Answer {
        match icmp_type {
            // Unreachable, packet too big, time exceeded, parameter problem.
            1..=4 => self.pass(Reason::Icmp, PCLASS_ICMP),
            129 => self.echo(false),
            128 => self.echo(true),
            // MLD, router and neighbour solicitation/advertisement, MLDv2.
            130..=136 | 143 => self.pass(Reason::NeighborDiscovery, PCLASS_ICMP),
            _ => self.deny(Reason::IcmpType, PCLASS_ICMP),
        }
    }

    fn mgmt_allows(&self, src: &Addr, port: u16) -> bool {
        let host = Prefix {
            addr: *src,
            len: 128,
        };
        self.policy
            .mgmt
            .iter()
            .any(|(prefix, ports)| prefix.contains(&host) && ports.contains(&port))
    }

    fn ports(&self, ip: &Ip, state: &RefState, proto: u32, l4: &[u8], tcp_flags: u8) -> Answer {
        let class = if proto == PROTO_TCP {
            PCLASS_TCP
        } else {
            PCLASS_UDP
        };
        let sport = u16::from_be_bytes([l4[0], l4[1]]);
        let dport = u16::from_be_bytes([l4[2], l4[3]]);
        // DHCP server to client, v4 and v6.
        if proto == PROTO_UDP && matches!((sport, dport), (67, 68) | (547, 546)) {
            return self.pass(Reason::Dhcp, class);
        }
        let profile = self.profile(&ip.dst);
        // A rule whose address sets leave the source out does not match;
        // the packet goes on, and is `peer_not_allowed` if nothing passes it.
        let mut peer_refused = false;
        if profile != PROFILE_NONE {
            let slot = self
                .policy
                .profiles
                .get(profile as usize)
                .map_or(0, |p| p.slot(proto, dport));
            if slot != 0 {
                if self.policy.peer_allowed(slot, addr_ip(&ip.src)) {
                    return (true, u32::from(slot));
                }
                peer_refused = true;
            }
        }
        if proto == PROTO_TCP && dport != 0 && self.mgmt_allows(&ip.src, dport) {
            return self.pass(Reason::Management, class);
        }
        // A SYN without ACK opens a connection; it is never a reply.
        let opens = proto == PROTO_TCP && tcp_flags & 0x12 == 0x02;
        if !opens
            && state
                .flows
                .contains(&(ip.src, ip.dst, sport, dport, ip.proto))
        {
            return self.pass(Reason::Established, class);
        }
        if profile == PROFILE_NONE {
            return self.deny(Reason::NoProfile, class);
        }
        if proto == PROTO_UDP && matches!(dport, 500 | 4500) && self.media(&ip.dst) {
            return self.ipsec(class);
        }
        if peer_refused {
            return self.deny(Reason::PeerNotAllowed, class);
        }
        self.deny(Reason::PortNotAllowed, class)
    }
}

/// An address as the reference keeps it (IPv4 mapped), as an `IpAddr`.
fn addr_ip(addr: &Addr) -> std::net::IpAddr {
    let v6 = std::net::Ipv6Addr::from(*addr);
    v6.to_ipv4_mapped()
        .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
}

/// The flow a frame the host sends records, as the egress recorder sees
/// it: any TCP segment but a reset, or any UDP datagram (not a later
/// fragment), unless a catalog rule lets its answer in anyway (the host
/// answering from a port its profile's inbound rows open).
pub fn egress_flow(frame: &[u8], policy: &CompiledPolicy) -> Option<Flow> {
    let Net::Ip(ip) = network(frame) else {
        return None;
    };
    if ip.later_fragment.is_some() {
        return None;
    }
    let l4 = frame.get(ip.l4..ip.l4 + 4)?;
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let proto = match ip.proto {
        6 if frame.get(ip.l4 + 13).is_some_and(|f| f & 0x04 == 0) => PROTO_TCP,
        17 => PROTO_UDP,
        _ => return None,
    };
    let profile = Decider { policy }.profile(&ip.src);
    let answered_by_rule = policy
        .profiles
        .get(profile as usize)
        .is_some_and(|p| p.slot(proto, sport) != 0 && !p.names_peers(proto, sport));
    (!answered_by_rule).then_some((ip.dst, ip.src, dport, sport, ip.proto))
}

/// The counter index a reason answer stands for, for messages.
pub fn describe(counter: u32) -> String {
    match classifier_common::decode_reason_counter(counter) {
        Some((reason, verdict, pclass)) => {
            let v = ["pass", "drop", "would_drop"]
                .get(verdict as usize)
                .copied()
                .unwrap_or("?");
            let p = classifier_common::PCLASS_NAMES
                .get(pclass as usize)
                .copied()
                .unwrap_or("?");
            format!("{v} {}/{p}", reason.name())
        }
        None => format!("rule slot {counter}"),
    }
}
