//! The metrics exposition: OpenMetrics text, built at scrape time from the
//! per-CPU counters (summed) so that nothing is cached that could drift. The
//! HTTP side that serves it is `metrics_http`; the families (names, types,
//! labels, help) are listed once, in `metric_families`.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    daemon::Daemon,
    metric_families::{
        BYTES, CATALOG_GENERATION, CATALOG_RULES, DROPS, FLOW_CAPACITY, FLOW_ENTRIES,
        FLOW_EVICTIONS, FLOW_REFUSALS, MetricFamily, PACKETS, RELOADS, XDP_ATTACHED,
    },
};

/// Registers `metric` under a family of `metric_families::FAMILIES`: its
/// name and help come from there, nowhere else.
pub(crate) fn register(
    registry: &mut Registry,
    family: &MetricFamily,
    metric: impl prometheus_client::registry::Metric,
) {
    registry.register(family.registered_name(), family.help, metric);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    iface: String,
    role: String,
    service: String,
    proto: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    iface: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    iface: String,
    mode: String,
}

/// `table` and, where the table holds kinds, `kind`: a `Vec` label set, so
/// that the fragment table's series carry no empty `kind`.
type FlowLabels = Vec<(&'static str, &'static str)>;

/// The flow and fragment tables as the last sweep counted them (every few
/// seconds: `FLOW_SWEEP_SECS` in `daemon::serve`).
fn register_flow_tables(registry: &mut Registry, figures: &crate::flow_table::FlowFigures) {
    let entries = Family::<FlowLabels, Gauge>::default();
    let capacity = Family::<FlowLabels, Gauge>::default();
    let evictions = Family::<FlowLabels, Counter>::default();
    let refusals = Family::<FlowLabels, Counter>::default();
    for (table, kind, f) in figures.rows() {
        let mut labels = vec![("table", table)];
        if let Some(kind) = kind {
            labels.push(("kind", kind));
        }
        entries
            .get_or_create(&labels)
            .set(i64::try_from(f.entries).unwrap_or(i64::MAX));
        capacity
            .get_or_create(&labels)
            .set(i64::try_from(f.capacity).unwrap_or(i64::MAX));
        evictions.get_or_create(&labels).inc_by(f.evictions);
        refusals.get_or_create(&labels).inc_by(f.refusals);
    }
    register(registry, &FLOW_ENTRIES, entries);
    register(registry, &FLOW_CAPACITY, capacity);
    register(registry, &FLOW_EVICTIONS, evictions);
    register(registry, &FLOW_REFUSALS, refusals);
}

pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric of docs/metrics.md for one daemon.
pub(crate) fn render(daemon: &mut Daemon) -> Result<String, String> {
    let snaps = daemon.snapshots().map_err(|e| e.to_string())?;
    let mut registry = Registry::default();

    let packets = Family::<PacketLabels, Counter>::default();
    let bytes = Family::<PacketLabels, Counter>::default();
    for (leg, snap) in &snaps {
        for (k, c) in &snap.rows {
            let labels = PacketLabels {
                iface: leg.clone(),
                role: k.role.clone(),
                service: k.service.clone(),
                proto: k.proto.clone(),
                verdict: k.verdict.to_string(),
            };
            packets.get_or_create(&labels).inc_by(c.packets);
            bytes.get_or_create(&labels).inc_by(c.bytes);
        }
    }
    register(&mut registry, &PACKETS, packets);
    register(&mut registry, &BYTES, bytes);

    let drops = Family::<DropLabels, Counter>::default();
    for (leg, snap) in &snaps {
        for (reason, c) in &snap.drops {
            drops
                .get_or_create(&DropLabels {
                    iface: leg.clone(),
                    reason: (*reason).to_string(),
                })
                .inc_by(c.packets);
        }
    }
    register(&mut registry, &DROPS, drops);

    let rules = Family::<RoleLabels, Gauge>::default();
    for (role, n) in daemon.rules_per_role() {
        rules
            .get_or_create(&RoleLabels { role: role.clone() })
            .set(*n as i64);
    }
    register(&mut registry, &CATALOG_RULES, rules);

    let generation = Gauge::<i64>::default();
    generation.set(i64::from(daemon.catalog_generation()));
    register(&mut registry, &CATALOG_GENERATION, generation);

    let reloads = Family::<ResultLabels, Counter>::default();
    reloads
        .get_or_create(&ResultLabels {
            result: "ok".into(),
        })
        .inc_by(daemon.reloads().ok);
    reloads
        .get_or_create(&ResultLabels {
            result: "error".into(),
        })
        .inc_by(daemon.reloads().error);
    register(&mut registry, &RELOADS, reloads);

    let attached = Family::<AttachLabels, Gauge>::default();
    for leg in daemon.legs() {
        attached
            .get_or_create(&AttachLabels {
                iface: leg.name().to_string(),
                mode: leg.xdp_mode().to_string(),
            })
            .set(i64::from(leg.attached()));
    }
    register(&mut registry, &XDP_ATTACHED, attached);

    register_flow_tables(&mut registry, daemon.flow_figures());
    crate::events::metrics::register(&mut registry, daemon.events().shared());

    let mut out = String::new();
    encode(&mut out, &registry).map_err(|e| e.to_string())?;
    Ok(out)
}
