//! One packet event as the daemon keeps it and the control socket sends it:
//! the kernel's `Event` with its headers read from the captured bytes.

use std::net::IpAddr;

use classifier_common::{
    EVENT_REASON_FLOW_REFUSED, EVENT_REASON_RULE, Event, Reason, STAT_CONFIRMED_REFUSED,
    STAT_FRAGMENT_REFUSED, STAT_NEW_REFUSED, Verdict, decode_media_reason, media::MEDIA_SLOT_FLAG,
};
use etherparse::{LaxPacketHeaders, LaxPayloadSlice, LinkHeader, NetHeaders, TransportHeader};
use serde::{Deserialize, Serialize};

use crate::policy::SlotRegistry;

/// The contract's JSON Lines fields (`portguard events --format json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventJson {
    /// RFC 3339, UTC.
    pub time: String,
    pub iface: String,
    pub verdict: String,
    pub reason: String,
    pub proto: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub vlan: Vec<u16>,
    pub len: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// What the control socket sends: the contract's fields plus what a pcap
/// needs (the wall-clock time in nanoseconds and the captured bytes, hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    #[serde(flatten)]
    pub event: EventJson,
    pub time_ns: u64,
    pub frame: String,
}

impl EventRecord {
    pub fn frame_bytes(&self) -> Vec<u8> {
        (0..self.frame.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.frame[2 * i..2 * i + 2], 16).ok())
            .collect()
    }
}

/// The headers read from an event's captured bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Headers {
    pub(crate) vlan: Vec<u16>,
    pub(crate) src: Option<IpAddr>,
    pub(crate) dst: Option<IpAddr>,
    pub(crate) ip_proto: Option<u8>,
    pub(crate) sport: Option<u16>,
    pub(crate) dport: Option<u16>,
    /// A TCP segment's flags byte (FIN 0x01 … CWR 0x80): whether a dropped
    /// segment asked for a connection (`suggest` counts only those).
    pub(crate) tcp_flags: Option<u8>,
}

/// Reads VLAN tags, addresses and ports with etherparse's lax parser, which
/// keeps what it could read of a cut or malformed frame (a dropped frame is
/// often malformed on purpose).
pub(crate) fn headers(frame: &[u8]) -> Headers {
    let mut h = Headers::default();
    let Ok(p) = LaxPacketHeaders::from_ethernet(frame) else {
        return h;
    };
    if let Some(LinkHeader::Ethernet2(_)) = &p.link {
        h.vlan = p.vlan_ids().iter().map(|id| id.value()).collect();
    }
    match &p.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            h.src = Some(IpAddr::from(ip.source));
            h.dst = Some(IpAddr::from(ip.destination));
            h.ip_proto = Some(ip.protocol.0);
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            h.src = Some(IpAddr::from(ip.source));
            h.dst = Some(IpAddr::from(ip.destination));
            h.ip_proto = Some(ip.next_header.0);
        }
        _ => {}
    }
    // Past IPv6 extension headers: the protocol of the IP payload.
    if let LaxPayloadSlice::Ip(ip) = &p.payload {
        h.ip_proto = Some(ip.ip_number.0);
    }
    match &p.transport {
        Some(TransportHeader::Udp(u)) => {
            h.sport = Some(u.source_port);
            h.dport = Some(u.destination_port);
            h.ip_proto = Some(17);
        }
        Some(TransportHeader::Tcp(t)) => {
            h.sport = Some(t.source_port);
            h.dport = Some(t.destination_port);
            h.ip_proto = Some(6);
            h.tcp_flags = Some(
                [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr]
                    .iter()
                    .enumerate()
                    .fold(0u8, |acc, (bit, &set)| acc | (u8::from(set) << bit)),
            );
        }
        Some(TransportHeader::Icmpv4(_)) => h.ip_proto = Some(1),
        Some(TransportHeader::Icmpv6(_)) => h.ip_proto = Some(58),
        // IGMP and anything else: `ip_proto` from the IP header says it.
        _ => {}
    }
    h
}

pub(crate) fn proto_name(p: Option<u8>) -> String {
    match p {
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(1) => "icmp".into(),
        Some(58) => "icmpv6".into(),
        Some(50) => "esp".into(),
        Some(51) => "ah".into(),
        Some(n) => format!("ip{n}"),
        None => "other".into(),
    }
}

pub(crate) fn verdict_name(v: u32) -> &'static str {
    match v {
        x if x == Verdict::Pass as u32 => Verdict::Pass.name(),
        x if x == Verdict::Drop as u32 => Verdict::Drop.name(),
        _ => Verdict::WouldDrop.name(),
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC now: what turns `bpf_ktime_get_ns`
/// into wall-clock time.
pub(crate) fn monotonic_offset_ns() -> i128 {
    let now = |clock| {
        // SAFETY: clock_gettime writes into the zeroed timespec we own.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

pub(crate) fn rfc3339(wall_ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(wall_ns))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The bytes of the frame the kernel captured for `e`.
pub(crate) fn captured(e: &Event) -> &[u8] {
    &e.data[..(e.captured as usize).min(e.data.len())]
}

/// Decodes the kernel's event for `iface`; `offset_ns` from
/// [`monotonic_offset_ns`], `registry` names rule slots.
#[cfg(test)]
pub(crate) fn decode(
    e: &Event,
    iface: &str,
    offset_ns: i128,
    registry: &SlotRegistry,
) -> EventRecord {
    decode_parsed(e, &headers(captured(e)), iface, offset_ns, registry)
}

/// [`decode`] with the headers already read from [`captured`]`(e)`, for a
/// caller that needs them too (the reader keeps the TCP flags for the store).
pub(crate) fn decode_parsed(
    e: &Event,
    h: &Headers,
    iface: &str,
    offset_ns: i128,
    registry: &SlotRegistry,
) -> EventRecord {
    let frame = captured(e);
    let wall = (i128::from(e.time_ns) + offset_ns).max(0) as u64;
    let (reason, role, service) = if e.reason == EVENT_REASON_FLOW_REFUSED {
        // The packet went on; the entry its flow (or fragment) needed was
        // refused: `service` says which.
        let refused = match e.slot {
            STAT_NEW_REFUSED => "flows/unconfirmed: the source's share is spent",
            STAT_CONFIRMED_REFUSED => "flows/confirmed: the table is full",
            STAT_FRAGMENT_REFUSED => "fragments: the source's share is spent",
            _ => "unknown",
        };
        ("flow_refused".to_string(), None, Some(refused.to_string()))
    } else if e.reason == EVENT_REASON_RULE {
        match u16::try_from(e.slot).ok().and_then(|s| registry.get(s)) {
            Some(k) => (
                "rule".to_string(),
                Some(k.role.clone()),
                Some(k.service.clone()),
            ),
            None => ("rule".to_string(), None, None),
        }
    } else {
        // A media rule's refusal: its pseudo-reason names the reason and
        // the rule.
        let (reason, rule) = match decode_media_reason(e.reason) {
            Some((index, reason)) => (
                Some(reason),
                u16::try_from(index)
                    .ok()
                    .and_then(|i| registry.get(MEDIA_SLOT_FLAG | i)),
            ),
            None => (Reason::from_index(e.reason), None),
        };
        (
            reason.map_or("unknown", Reason::name).to_string(),
            rule.map(|k| k.role.clone()),
            rule.map(|k| k.service.clone()),
        )
    };
    let mut hex = String::with_capacity(2 * frame.len());
    for b in frame {
        hex.push_str(&format!("{b:02x}"));
    }
    EventRecord {
        event: EventJson {
            time: rfc3339(wall),
            iface: iface.to_string(),
            verdict: verdict_name(e.verdict).to_string(),
            reason,
            proto: proto_name(h.ip_proto),
            src: h.src,
            dst: h.dst,
            sport: h.sport,
            dport: h.dport,
            vlan: h.vlan.clone(),
            len: e.len,
            role,
            service,
        },
        time_ns: wall,
        frame: hex,
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, VlanId};

    use super::*;

    const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

    fn vlan(id: u16) -> VlanId {
        VlanId::try_new(id).unwrap_or_else(|e| panic!("VLAN {id}: {e}"))
    }

    /// A UDP frame through 802.1ad 100 and 802.1Q 20, built by etherparse.
    fn qinq_udp(sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MACS.0, MACS.1)
            .double_vlan(vlan(100), vlan(20))
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(sport, dport);
        let mut f = Vec::with_capacity(b.size(8));
        b.write(&mut f, &[0; 8]).expect("building a frame");
        f
    }

    #[test]
    fn headers_of_tagged_ipv4_and_ipv6_frames() {
        let f = qinq_udp(40_000, 161);
        let h = headers(&f);
        assert_eq!(h.vlan, vec![100, 20], "VLAN IDs of {h:?}");
        assert_eq!(h.src, Some("198.18.0.1".parse().expect("ip")), "{h:?}");
        assert_eq!(h.dst, Some("198.18.0.2".parse().expect("ip")), "{h:?}");
        assert_eq!(
            (h.ip_proto, h.sport, h.dport),
            (Some(17), Some(40_000), Some(161))
        );

        let src: std::net::Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let dst: std::net::Ipv6Addr = "2001:db8::2".parse().expect("ip");
        let b = PacketBuilder::ethernet2(MACS.0, MACS.1)
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(40_001, 3389, 1, 1024);
        let mut f = Vec::with_capacity(b.size(0));
        b.write(&mut f, &[]).expect("building a frame");
        let h = headers(&f);
        assert!(h.vlan.is_empty(), "{h:?}");
        assert_eq!(h.src, Some(IpAddr::from(src)), "{h:?}");
        assert_eq!(
            (h.ip_proto, h.sport, h.dport),
            (Some(6), Some(40_001), Some(3389))
        );
    }

    #[test]
    fn tcp_flags_are_read_bit_for_bit() {
        let segment = |syn: bool, ack: bool| {
            let b = PacketBuilder::ethernet2(MACS.0, MACS.1)
                .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
                .tcp(40_002, 3389, 1, 1024);
            let b = if syn { b.syn() } else { b };
            let b = if ack { b.ack(7) } else { b };
            let mut f = Vec::new();
            b.write(&mut f, &[]).expect("building a frame");
            headers(&f).tcp_flags
        };
        assert_eq!(segment(true, false), Some(0x02), "a SYN");
        assert_eq!(segment(false, true), Some(0x10), "a bare ACK");
        assert_eq!(segment(true, true), Some(0x12), "a SYN-ACK");
        assert_eq!(headers(&qinq_udp(1, 161)).tcp_flags, None, "UDP has none");
    }

    #[test]
    fn a_refused_entry_is_named_with_its_table() {
        let e = Event {
            time_ns: 0,
            ifindex: 1,
            verdict: Verdict::Pass as u32,
            reason: EVENT_REASON_FLOW_REFUSED,
            slot: STAT_NEW_REFUSED,
            len: 0,
            captured: 0,
            data: [0; classifier_common::EVENT_SNAPLEN],
        };
        let r = decode(&e, "eth0", 0, &SlotRegistry::default());
        assert_eq!(
            (r.event.verdict.as_str(), r.event.reason.as_str()),
            ("pass", "flow_refused")
        );
        assert_eq!(
            r.event.service.as_deref(),
            Some("flows/unconfirmed: the source's share is spent")
        );
    }

    #[test]
    fn decode_names_verdict_reason_and_time() {
        let f = qinq_udp(1, 161);
        let mut data = [0u8; 128];
        data[..f.len()].copy_from_slice(&f);
        let e = Event {
            time_ns: 5_000_000_000,
            ifindex: 1,
            verdict: Verdict::WouldDrop as u32,
            reason: Reason::PortNotAllowed as u32,
            slot: 0,
            len: f.len() as u32,
            captured: f.len() as u32,
            data,
        };
        let r = decode(
            &e,
            "eth0",
            1_700_000_000_000_000_000,
            &SlotRegistry::default(),
        );
        assert_eq!(r.event.verdict, "would_drop");
        assert_eq!(r.event.reason, "port_not_allowed");
        assert_eq!(r.event.proto, "udp");
        assert_eq!(r.event.time, "2023-11-14T22:13:25Z", "time of {r:?}");
        assert_eq!(r.frame_bytes(), f, "frame round trip");
    }
}
