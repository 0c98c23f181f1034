//! The metric families `GET /metrics` exports: one list, from which the
//! registration (`metrics`, `events::metrics`) takes names and help, and
//! against which docs/metrics.md and the tests (a real Prometheus, the
//! alert rules) are checked.

/// A Prometheus metric type, as the exposition's `# TYPE` line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
}

impl MetricType {
    pub fn name(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// One family: its name as scraped (a counter's with `_total`), its type,
/// its label names (the flow families' `kind` only on tables that hold
/// kinds) and its help text.
#[derive(Clone, Copy, Debug)]
pub struct MetricFamily {
    pub name: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl MetricFamily {
    /// The name to register: prometheus-client appends a counter's
    /// `_total` itself.
    pub fn registered_name(&self) -> &'static str {
        match self.kind {
            MetricType::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            MetricType::Gauge => self.name,
        }
    }
}

const PACKET_LABELS: &[&str] = &["iface", "role", "service", "proto", "verdict"];
const FLOW_LABELS: &[&str] = &["table", "kind"];

pub const PACKETS: MetricFamily = MetricFamily {
    name: "portguard_packets_total",
    kind: MetricType::Counter,
    labels: PACKET_LABELS,
    help: "Packets by role, service, protocol and verdict",
};
pub const BYTES: MetricFamily = MetricFamily {
    name: "portguard_bytes_total",
    kind: MetricType::Counter,
    labels: PACKET_LABELS,
    help: "Bytes by role, service, protocol and verdict",
};
pub const DROPS: MetricFamily = MetricFamily {
    name: "portguard_drops_total",
    kind: MetricType::Counter,
    labels: &["iface", "reason"],
    help: "Packets dropped (or, in monitor mode, that would be) by reason",
};
pub const CATALOG_RULES: MetricFamily = MetricFamily {
    name: "portguard_catalog_rules",
    kind: MetricType::Gauge,
    labels: &["role"],
    help: "Rules in force per role",
};
pub const CATALOG_GENERATION: MetricFamily = MetricFamily {
    name: "portguard_catalog_generation",
    kind: MetricType::Gauge,
    labels: &[],
    help: "Catalog generation in force",
};
pub const RELOADS: MetricFamily = MetricFamily {
    name: "portguard_reloads_total",
    kind: MetricType::Counter,
    labels: &["result"],
    help: "Catalog reloads by result",
};
pub const XDP_ATTACHED: MetricFamily = MetricFamily {
    name: "portguard_xdp_attached",
    kind: MetricType::Gauge,
    labels: &["iface", "mode"],
    help: "1 while the XDP program is attached",
};
pub const EVENTS_SUPPRESSED: MetricFamily = MetricFamily {
    name: "portguard_events_suppressed_total",
    kind: MetricType::Counter,
    labels: &["iface"],
    help: "Packet events the per-CPU budget (or a full ring) suppressed",
};
pub const TOP_DROPPED_PORT: MetricFamily = MetricFamily {
    name: "portguard_top_dropped_port",
    kind: MetricType::Gauge,
    labels: &["iface", "proto", "port", "verdict"],
    help: "Packet events since start of the 20 busiest dropped or would-drop (proto, port) pairs per verdict",
};
pub const FLOW_ENTRIES: MetricFamily = MetricFamily {
    name: "portguard_flow_entries",
    kind: MetricType::Gauge,
    labels: FLOW_LABELS,
    help: "Entries in each flow and fragment table",
};
pub const FLOW_CAPACITY: MetricFamily = MetricFamily {
    name: "portguard_flow_capacity",
    kind: MetricType::Gauge,
    labels: FLOW_LABELS,
    help: "Entries each flow and fragment table holds at most",
};
pub const FLOW_EVICTIONS: MetricFamily = MetricFamily {
    name: "portguard_flow_evictions_total",
    kind: MetricType::Counter,
    labels: FLOW_LABELS,
    help: "Entries a full table pushed out to make room",
};
pub const FLOW_REFUSALS: MetricFamily = MetricFamily {
    name: "portguard_flow_refusals_total",
    kind: MetricType::Counter,
    labels: FLOW_LABELS,
    help: "Entries not made: a source's share spent, or the table full",
};

/// Every family, in the order docs/metrics.md lists them.
pub const FAMILIES: &[MetricFamily] = &[
    PACKETS,
    BYTES,
    DROPS,
    CATALOG_RULES,
    CATALOG_GENERATION,
    RELOADS,
    XDP_ATTACHED,
    EVENTS_SUPPRESSED,
    TOP_DROPPED_PORT,
    FLOW_ENTRIES,
    FLOW_CAPACITY,
    FLOW_EVICTIONS,
    FLOW_REFUSALS,
];

/// The one family whose `port` label is allowed: it holds at most 20 series
/// per interface and verdict.
pub const PORT_LABELLED: &str = TOP_DROPPED_PORT.name;

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/metrics.md's table: (name, type, label names), a row that says
    /// `same` taking the row above's labels.
    fn documented() -> Vec<(String, String, Vec<String>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let [_, name, kind, labels, _, ..] = cells.as_slice() else {
                continue;
            };
            let Some(name) = name
                .strip_prefix("`portguard_")
                .and_then(|n| n.strip_suffix('`'))
            else {
                continue;
            };
            let labels = if labels.starts_with("same") {
                rows.last().map(|r| r.2.clone()).unwrap_or_default()
            } else {
                // Label names are the backticked words outside parentheses
                // (inside are their values).
                let mut depth = 0;
                let outside: String = labels
                    .chars()
                    .filter(|c| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => return depth == 0,
                        }
                        false
                    })
                    .collect();
                outside
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(String::from)
                    .collect()
            };
            rows.push((format!("portguard_{name}"), (*kind).to_string(), labels));
        }
        rows
    }

    #[test]
    fn docs_metrics_md_lists_exactly_the_families() {
        let documented = documented();
        let families: Vec<(String, String, Vec<String>)> = FAMILIES
            .iter()
            .map(|f| {
                (
                    f.name.to_string(),
                    f.kind.name().to_string(),
                    f.labels.iter().map(|l| (*l).to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            documented, families,
            "docs/metrics.md's table (left) against metric_families::FAMILIES (right)"
        );
    }

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family listed twice");
        for f in FAMILIES {
            assert_eq!(
                f.name.ends_with("_total"),
                f.kind == MetricType::Counter,
                "{}: a counter's name ends in _total, a gauge's does not",
                f.name
            );
        }
    }
}
