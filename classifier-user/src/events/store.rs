//! What the daemon remembers of its events, bounded whatever the traffic:
//! the last `RECENT` events, and aggregates whose key sets are capped.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasher as _, RandomState},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use classifier_common::Reason;

use super::record::EventRecord;

/// Events kept for `portguard events` (about 1.5 MiB with their frames).
pub(crate) const RECENT: usize = 4_096;
/// Distinct (proto, port, verdict) keys aggregated since start.
pub const MAX_PORT_KEYS: usize = 4_096;
/// Distinct sources remembered per port key.
pub(crate) const MAX_SOURCES_PER_PORT: usize = 64;
/// Distinct sources counted per second of the last minute.
pub(crate) const MAX_SOURCES_PER_SECOND: usize = 256;
/// Distinct (proto, port, peer) refused as `peer_not_allowed` remembered
/// since start, for `suggest`; the rest are counted.
pub const MAX_REFUSED_PEERS: usize = 256;
/// Series per verdict in the top-ports gauge.
pub(crate) const TOP_PORTS: usize = 20;
/// New keys between two sweeps of a full key table (see [`Store::push`]):
/// a sweep visits every key, so this keeps it to 16 visits per new key.
const SWEEP_EVERY: usize = MAX_PORT_KEYS / 16;

/// TCP flag bits (RFC 9293).
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What a dropped packet says about the port it was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Someone asking for a service there: a TCP SYN (without ACK, RST or
    /// FIN), or a UDP datagram that is not an answer from a server port.
    Request,
    /// Anything else: a TCP segment of a connection that is not being
    /// opened (a late answer to the host's own connection, backscatter of
    /// someone else's spoofed SYNs, an ACK scan), a UDP datagram from a
    /// well-known port to a high one (a server's answer), other protocols.
    Other,
}

impl Kind {
    /// `tcp_flags` is the TCP flags byte (None when the frame was cut
    /// before it: not known to be a SYN, so not a request).
    pub(crate) fn of(proto: &str, sport: Option<u16>, dport: u16, tcp_flags: Option<u8>) -> Kind {
        let request = match proto {
            "tcp" => {
                tcp_flags.is_some_and(|f| f & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN)
            }
            // A client's source port is a high one; a datagram from a
            // well-known port (DNS 53, NTP 123, QUIC 443 …) to a high port
            // is a server answering. Well-known to well-known (NTP 123 ->
            // 123, IKE 500 -> 500) is a peer asking.
            "udp" => !sport.is_some_and(|s| s < 1024 && dport >= 1024),
            _ => false,
        };
        if request { Kind::Request } else { Kind::Other }
    }
}

/// One (protocol, destination port, direction, verdict) aggregated since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAggregate {
    pub proto: String,
    pub port: u16,
    /// XDP sees ingress only: always `inbound` today.
    pub direction: String,
    pub verdict: String,
    pub packets: u64,
    /// Distinct sources seen, counted up to `MAX_SOURCES_PER_PORT`.
    pub sources: u64,
    /// True when more sources were seen than counted.
    pub sources_capped: bool,
    /// Of `packets`, those dropped because no rule allows the port
    /// (`port_not_allowed`): what a catalog rule could let through.
    #[serde(default)]
    pub not_allowed: u64,
    /// Of `not_allowed`, the requests ([`Kind::Request`]): the only packets
    /// `suggest` takes as evidence that a service is wanted.
    #[serde(default)]
    pub requests: u64,
    /// Distinct sources of those requests, counted up to `MAX_SOURCES_PER_PORT`.
    #[serde(default)]
    pub request_sources: u64,
    #[serde(default)]
    pub request_sources_capped: bool,
}

/// Distinct sources, counted up to `MAX_SOURCES_PER_PORT`: sorted keyed
/// hashes of the addresses (8 bytes each; a full set is 512 bytes, where a
/// tree of `IpAddr`s took about 2 KiB).
#[derive(Default)]
struct Sources {
    hashes: Vec<u64>,
    capped: bool,
}

impl Sources {
    fn insert(&mut self, hash: u64) {
        match self.hashes.binary_search(&hash) {
            Ok(_) => {}
            Err(at) if self.hashes.len() < MAX_SOURCES_PER_PORT => self.hashes.insert(at, hash),
            Err(_) => self.capped = true,
        }
    }

    fn count(&self) -> u64 {
        self.hashes.len() as u64
    }
}

#[derive(Default)]
struct PortState {
    packets: u64,
    not_allowed: u64,
    sources: Sources,
    requests: u64,
    request_sources: Sources,
}

/// One second of the last minute, for `top`.
#[derive(Default)]
struct Second {
    second: u64,
    ports: HashMap<(String, u16, String), u64>,
    sources: HashMap<IpAddr, u64>,
    other_sources: u64,
}

/// Top (proto, port) pairs and sources over the last minute.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopView {
    pub ports: Vec<(String, u16, String, u64)>,
    pub sources: Vec<(IpAddr, u64)>,
}

/// A peer a rule's address sets left out (`peer_not_allowed`): the
/// event's source, the peer of an inbound rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedPeer {
    pub proto: String,
    pub port: u16,
    pub peer: Option<IpAddr>,
    pub verdict: String,
    pub packets: u64,
}

#[derive(Default)]
pub(crate) struct Store {
    recent: VecDeque<EventRecord>,
    /// (proto, port, peer, verdict) → packets, at most `MAX_REFUSED_PEERS`.
    refused: BTreeMap<(String, u16, IpAddr, String), u64>,
    /// `peer_not_allowed` events not kept in `refused` (full).
    pub(crate) refused_overflow: u64,
    ports: BTreeMap<(String, u16, String), PortState>,
    /// Events not aggregated because `MAX_PORT_KEYS` was reached.
    pub(crate) ports_overflow: u64,
    /// Keys holding a single event, forgotten to make room for new ones.
    pub(crate) ports_evicted: u64,
    /// New keys since the last sweep of the full key table.
    inserted_since_sweep: usize,
    /// Keys the hashes of sources: random per process, so that nobody can
    /// choose addresses that collide.
    hasher: RandomState,
    minute: VecDeque<Second>,
    pub(crate) received: u64,
}

impl Store {
    /// Keeps `r`; `tcp_flags` are its TCP segment's (see [`Kind::of`]).
    ///
    /// When the key table is full, a new key first sweeps out the keys that
    /// hold a single event (what a port scan leaves: one probe per port),
    /// at most once per `SWEEP_EVERY` new keys; only then are events
    /// counted as overflow. So a scan cannot keep later traffic, which
    /// comes back and repeats, out of the aggregates for good.
    pub(crate) fn push(&mut self, r: EventRecord, tcp_flags: Option<u8>) {
        self.received += 1;
        if let Some(dport) = r.event.dport
            && r.event.verdict != "pass"
        {
            let key = (r.event.proto.clone(), dport, r.event.verdict.clone());
            let mut known = self.ports.contains_key(&key);
            if !known
                && self.ports.len() >= MAX_PORT_KEYS
                && self.inserted_since_sweep >= SWEEP_EVERY
            {
                let before = self.ports.len();
                self.ports.retain(|_, st| st.packets > 1);
                self.ports_evicted += (before - self.ports.len()) as u64;
                self.inserted_since_sweep = 0;
            }
            if !known && self.ports.len() < MAX_PORT_KEYS {
                self.inserted_since_sweep += 1;
                known = true;
            }
            if known {
                let src = r.event.src.map(|a| self.hasher.hash_one(a));
                let st = self.ports.entry(key.clone()).or_default();
                st.packets += 1;
                if let Some(h) = src {
                    st.sources.insert(h);
                }
                if r.event.reason == Reason::PeerNotAllowed.name()
                    && let Some(peer) = r.event.src
                {
                    let k = (r.event.proto.clone(), dport, peer, r.event.verdict.clone());
                    if self.refused.len() < MAX_REFUSED_PEERS || self.refused.contains_key(&k) {
                        *self.refused.entry(k).or_default() += 1;
                    } else {
                        self.refused_overflow += 1;
                    }
                }
                if r.event.reason == "port_not_allowed" {
                    st.not_allowed += 1;
                    if Kind::of(&r.event.proto, r.event.sport, dport, tcp_flags) == Kind::Request {
                        st.requests += 1;
                        if let Some(h) = src {
                            st.request_sources.insert(h);
                        }
                    }
                }
            } else {
                self.ports_overflow += 1;
            }
            let second = r.time_ns / 1_000_000_000;
            if self.minute.back().is_none_or(|s| s.second != second) {
                self.minute.push_back(Second {
                    second,
                    ..Second::default()
                });
                while self.minute.len() > 60 {
                    self.minute.pop_front();
                }
            }
            if let Some(s) = self.minute.back_mut() {
                *s.ports.entry(key).or_default() += 1;
                if let Some(src) = r.event.src {
                    if s.sources.len() < MAX_SOURCES_PER_SECOND || s.sources.contains_key(&src) {
                        *s.sources.entry(src).or_default() += 1;
                    } else {
                        s.other_sources += 1;
                    }
                }
            }
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }

    /// The last `count` events that `keep` accepts, oldest first.
    pub(crate) fn recent(
        &self,
        count: usize,
        keep: impl Fn(&EventRecord) -> bool,
    ) -> Vec<EventRecord> {
        let mut out: Vec<EventRecord> = self
            .recent
            .iter()
            .rev()
            .filter(|r| keep(r))
            .take(count)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub(crate) fn aggregates(&self) -> Vec<PortAggregate> {
        self.ports
            .iter()
            .map(|((proto, port, verdict), st)| PortAggregate {
                proto: proto.clone(),
                port: *port,
                direction: "inbound".into(),
                verdict: verdict.clone(),
                packets: st.packets,
                sources: st.sources.count(),
                sources_capped: st.sources.capped,
                not_allowed: st.not_allowed,
                requests: st.requests,
                request_sources: st.request_sources.count(),
                request_sources_capped: st.request_sources.capped,
            })
            .collect()
    }

    /// The peers refused by a rule's address sets, busiest first.
    pub(crate) fn refused_peers(&self) -> Vec<RefusedPeer> {
        let mut out: Vec<RefusedPeer> = self
            .refused
            .iter()
            .map(|((proto, port, peer, verdict), n)| RefusedPeer {
                proto: proto.clone(),
                port: *port,
                peer: Some(*peer),
                verdict: verdict.clone(),
                packets: *n,
            })
            .collect();
        out.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.port.cmp(&b.port)));
        out
    }

    /// The `TOP_PORTS` busiest (proto, port) pairs per verdict since start.
    pub(crate) fn top_ports(&self) -> Vec<PortAggregate> {
        let mut all = self.aggregates();
        all.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.port.cmp(&b.port)));
        let mut per_verdict: HashMap<String, usize> = HashMap::new();
        all.into_iter()
            .filter(|a| {
                let n = per_verdict.entry(a.verdict.clone()).or_default();
                *n += 1;
                *n <= TOP_PORTS
            })
            .collect()
    }

    /// Top ports and sources over the seconds since `now_s - 60`.
    pub(crate) fn last_minute(&self, now_s: u64, n: usize) -> TopView {
        let mut ports: HashMap<(String, u16, String), u64> = HashMap::new();
        let mut sources: HashMap<IpAddr, u64> = HashMap::new();
        for s in self.minute.iter().filter(|s| s.second + 60 > now_s) {
            for (k, v) in &s.ports {
                *ports.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &s.sources {
                *sources.entry(*k).or_default() += v;
            }
        }
        let mut ports: Vec<(String, u16, String, u64)> = ports
            .into_iter()
            .map(|((p, port, v), n)| (p, port, v, n))
            .collect();
        ports.sort_by(|a, b| b.3.cmp(&a.3).then(a.1.cmp(&b.1)));
        ports.truncate(n);
        let mut sources: Vec<(IpAddr, u64)> = sources.into_iter().collect();
        sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sources.truncate(n);
        TopView { ports, sources }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::EventJson;

    fn rec(port: u16, src: &str, verdict: &str) -> EventRecord {
        rec_from("udp", 1, port, src, verdict)
    }

    fn rec_from(proto: &str, sport: u16, port: u16, src: &str, verdict: &str) -> EventRecord {
        EventRecord {
            event: EventJson {
                time: String::new(),
                iface: "x".into(),
                verdict: verdict.into(),
                reason: "port_not_allowed".into(),
                proto: proto.into(),
                src: src.parse().ok(),
                dst: None,
                sport: Some(sport),
                dport: Some(port),
                vlan: vec![],
                len: 60,
                role: None,
                service: None,
            },
            time_ns: 10_000_000_000,
            frame: String::new(),
        }
    }

    fn src(i: usize) -> String {
        format!("198.18.{}.{}", (i / 250) % 250, i % 250)
    }

    #[test]
    fn recent_events_and_aggregates_stay_bounded() {
        let mut s = Store::default();
        // Two events per key: none of them may be swept out.
        for round in 0..2 {
            for i in 0..MAX_PORT_KEYS {
                s.push(rec(i as u16, &src(i + round), "drop"), None);
            }
        }
        for i in 0..(RECENT + 100) {
            s.push(rec((MAX_PORT_KEYS + i % 50) as u16, &src(i), "drop"), None);
            for _ in 0..MAX_SOURCES_PER_PORT / 32 {
                s.push(rec(7, &src(i), "drop"), None);
            }
        }
        assert_eq!(s.recent.len(), RECENT, "recent events are capped");
        assert_eq!(s.ports.len(), MAX_PORT_KEYS, "port keys are capped");
        assert_eq!(
            s.ports_overflow,
            (RECENT + 100) as u64,
            "events past the key cap are counted"
        );
        assert_eq!(s.ports_evicted, 0, "keys with two events were evicted");
        assert!(
            s.ports
                .values()
                .all(|p| p.sources.hashes.len() <= MAX_SOURCES_PER_PORT),
            "sources per port are capped"
        );
        let seven = &s.ports[&("udp".to_string(), 7, "drop".to_string())];
        assert!(
            seven.sources.count() == MAX_SOURCES_PER_PORT as u64 && seven.sources.capped,
            "UDP 7 from {} sources counts {} (capped {})",
            RECENT + 100,
            seven.sources.count(),
            seven.sources.capped
        );
        assert!(s.top_ports().len() <= TOP_PORTS, "top ports per verdict");
    }

    #[test]
    fn a_scan_that_fills_the_key_table_is_swept_out_for_later_traffic() {
        let mut s = Store::default();
        // One probe to each of 5,000 ports, one source: a scan.
        for port in 1..=5_000u16 {
            s.push(
                rec_from("tcp", 40_000, port, "198.18.0.66", "drop"),
                Some(TCP_SYN),
            );
        }
        // Then clients that come back.
        for i in 0..3 {
            s.push(
                rec_from("tcp", 40_001, 5_061, &src(i), "drop"),
                Some(TCP_SYN),
            );
        }
        let a = s.aggregates();
        let sip = a.iter().find(|a| a.port == 5_061).unwrap_or_else(|| {
            panic!(
                "TCP 5061 after the scan was not aggregated ({} keys, {} overflow, {} evicted)",
                a.len(),
                s.ports_overflow,
                s.ports_evicted
            )
        });
        assert_eq!((sip.requests, sip.request_sources), (3, 3), "{sip:?}");
        assert!(a.len() <= MAX_PORT_KEYS, "{} keys", a.len());
        assert_eq!(
            s.ports_evicted + a.len() as u64 + s.ports_overflow,
            5_000 + 1,
            "every scanned port and TCP 5061 is a key kept, evicted or overflowed: {} evicted, {} kept, {} overflow",
            s.ports_evicted,
            a.len(),
            s.ports_overflow
        );
    }

    #[test]
    fn only_syns_and_udp_requests_are_requests() {
        let syn = Some(TCP_SYN);
        let cases = [
            ("tcp", 40_000, 3389, syn, Kind::Request),
            // ECN-setup SYN (ECE, CWR) and a SYN with PSH are still SYNs.
            ("tcp", 40_000, 3389, Some(TCP_SYN | 0xC8), Kind::Request),
            ("tcp", 40_000, 3389, Some(TCP_ACK), Kind::Other),
            ("tcp", 40_000, 3389, Some(TCP_SYN | TCP_ACK), Kind::Other),
            ("tcp", 40_000, 3389, Some(TCP_RST), Kind::Other),
            ("tcp", 40_000, 3389, Some(TCP_SYN | TCP_FIN), Kind::Other),
            ("tcp", 40_000, 3389, Some(0), Kind::Other),
            ("tcp", 40_000, 3389, None, Kind::Other),
            ("udp", 40_000, 161, None, Kind::Request),
            ("udp", 53, 45_000, None, Kind::Other),
            ("udp", 123, 123, None, Kind::Request),
            ("udp", 5_060, 5_060, None, Kind::Request),
            ("icmp", 0, 0, None, Kind::Other),
        ];
        for (proto, sport, dport, flags, want) in cases {
            assert_eq!(
                Kind::of(proto, Some(sport), dport, flags),
                want,
                "{proto} {sport} -> {dport} flags {flags:?}"
            );
        }
    }

    #[test]
    fn requests_and_their_sources_are_counted_apart_from_other_packets() {
        let mut s = Store::default();
        for i in 0..70 {
            s.push(rec_from("tcp", 443, 3389, &src(i), "drop"), Some(TCP_ACK));
        }
        s.push(
            rec_from("tcp", 40_000, 3389, "198.18.9.1", "drop"),
            Some(TCP_SYN),
        );
        s.push(
            rec_from("tcp", 40_000, 3389, "198.18.9.1", "drop"),
            Some(TCP_SYN),
        );
        let a = s.aggregates();
        assert_eq!(a.len(), 1, "{a:?}");
        let rdp = &a[0];
        assert_eq!(
            (rdp.packets, rdp.sources, rdp.sources_capped),
            (72, 64, true),
            "all packets and their sources: {rdp:?}"
        );
        assert_eq!(
            (
                rdp.requests,
                rdp.request_sources,
                rdp.request_sources_capped
            ),
            (2, 1, false),
            "only the SYNs are requests: {rdp:?}"
        );
    }

    #[test]
    fn a_media_rules_refusals_are_never_evidence_for_suggest() {
        let mut s = Store::default();
        for (i, reason) in ["not_media", "reflection", "rate_limited"]
            .iter()
            .enumerate()
        {
            for n in 0..20 {
                let mut r = rec_from(
                    "udp",
                    40_000 + n,
                    3478,
                    &src(i * 20 + n as usize),
                    "would_drop",
                );
                r.event.reason = (*reason).into();
                s.push(r, None);
            }
        }
        let a = s.aggregates();
        let stun = a
            .iter()
            .find(|a| a.port == 3478)
            .expect("UDP 3478 aggregated");
        assert_eq!(
            (stun.packets, stun.not_allowed, stun.requests),
            (60, 0, 0),
            "media refusals are counted, never as requests a rule could open: {stun:?}"
        );
    }

    #[test]
    fn aggregates_count_packets_and_distinct_sources() {
        let mut s = Store::default();
        for src in ["198.18.0.1", "198.18.0.2", "198.18.0.1"] {
            s.push(rec(161, src, "would_drop"), None);
        }
        s.push(rec(3389, "198.18.0.9", "drop"), None);
        let a = s.aggregates();
        let snmp = a
            .iter()
            .find(|a| a.port == 161)
            .expect("UDP 161 aggregated");
        assert_eq!((snmp.packets, snmp.sources), (3, 2), "{snmp:?}");
        let top = s.last_minute(10, 5);
        assert_eq!(
            top.ports[0],
            ("udp".to_string(), 161, "would_drop".to_string(), 3)
        );
        assert_eq!(top.sources[0].1, 2, "{top:?}");
    }
}
