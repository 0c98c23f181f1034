//! What the daemon remembers of its events, bounded whatever the traffic:
//! the last `RECENT` events, and aggregates whose key sets are capped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use super::record::EventRecord;

/// Events kept for `portguard events` (about 1.5 MiB with their frames).
pub const RECENT: usize = 4_096;
/// Distinct (proto, port, verdict) keys aggregated since start.
pub const MAX_PORT_KEYS: usize = 4_096;
/// Distinct sources remembered per port key.
pub const MAX_SOURCES_PER_PORT: usize = 64;
/// Distinct sources counted per second of the last minute.
pub const MAX_SOURCES_PER_SECOND: usize = 256;
/// Series per verdict in the top-ports gauge.
pub const TOP_PORTS: usize = 20;

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
}

#[derive(Default)]
struct PortState {
    packets: u64,
    not_allowed: u64,
    sources: BTreeSet<IpAddr>,
    capped: bool,
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

#[derive(Default)]
pub struct Store {
    recent: VecDeque<EventRecord>,
    ports: BTreeMap<(String, u16, String), PortState>,
    /// Events not aggregated because `MAX_PORT_KEYS` was reached.
    pub ports_overflow: u64,
    minute: VecDeque<Second>,
    pub received: u64,
}

impl Store {
    pub fn push(&mut self, r: EventRecord) {
        self.received += 1;
        if let Some(dport) = r.event.dport
            && r.event.verdict != "pass"
        {
            let key = (r.event.proto.clone(), dport, r.event.verdict.clone());
            let known = self.ports.contains_key(&key);
            if known || self.ports.len() < MAX_PORT_KEYS {
                let st = self.ports.entry(key.clone()).or_default();
                st.packets += 1;
                if r.event.reason == "port_not_allowed" {
                    st.not_allowed += 1;
                }
                if let Some(src) = r.event.src {
                    if st.sources.len() < MAX_SOURCES_PER_PORT {
                        st.sources.insert(src);
                    } else if !st.sources.contains(&src) {
                        st.capped = true;
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
    pub fn recent(&self, count: usize, keep: impl Fn(&EventRecord) -> bool) -> Vec<EventRecord> {
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

    pub fn aggregates(&self) -> Vec<PortAggregate> {
        self.ports
            .iter()
            .map(|((proto, port, verdict), st)| PortAggregate {
                proto: proto.clone(),
                port: *port,
                direction: "inbound".into(),
                verdict: verdict.clone(),
                packets: st.packets,
                sources: st.sources.len() as u64,
                sources_capped: st.capped,
                not_allowed: st.not_allowed,
            })
            .collect()
    }

    /// The `TOP_PORTS` busiest (proto, port) pairs per verdict since start.
    pub fn top_ports(&self) -> Vec<PortAggregate> {
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
    pub fn last_minute(&self, now_s: u64, n: usize) -> TopView {
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
        EventRecord {
            event: EventJson {
                time: String::new(),
                iface: "x".into(),
                verdict: verdict.into(),
                reason: "port_not_allowed".into(),
                proto: "udp".into(),
                src: src.parse().ok(),
                dst: None,
                sport: Some(1),
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

    #[test]
    fn recent_events_and_aggregates_stay_bounded() {
        let mut s = Store::default();
        for i in 0..(RECENT + 100) {
            let src = format!("198.18.{}.{}", (i / 250) % 250, i % 250);
            s.push(rec((i % (MAX_PORT_KEYS + 50)) as u16, &src, "drop"));
        }
        assert_eq!(s.recent.len(), RECENT, "recent events are capped");
        assert_eq!(s.ports.len(), MAX_PORT_KEYS, "port keys are capped");
        assert_eq!(s.ports_overflow, 50, "events past the key cap are counted");
        assert!(
            s.ports
                .values()
                .all(|p| p.sources.len() <= MAX_SOURCES_PER_PORT),
            "sources per port are capped"
        );
        assert!(s.top_ports().len() <= TOP_PORTS, "top ports per verdict");
    }

    #[test]
    fn aggregates_count_packets_and_distinct_sources() {
        let mut s = Store::default();
        for src in ["198.18.0.1", "198.18.0.2", "198.18.0.1"] {
            s.push(rec(161, src, "would_drop"));
        }
        s.push(rec(3389, "198.18.0.9", "drop"));
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
