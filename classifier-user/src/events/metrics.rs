//! The events' metrics: `portguard_events_suppressed_total{iface}` and the
//! top-20 gauge `portguard_top_dropped_port{iface,proto,port,verdict}`
//! (packets seen in events since start; at most 20 series per verdict).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Shared;
use crate::{
    metric_families::{EVENTS_SUPPRESSED, TOP_DROPPED_PORT},
    metrics::register as register_family,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfaceLabels {
    iface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    iface: String,
    proto: String,
    port: String,
    verdict: String,
}

pub(crate) fn register(registry: &mut Registry, shared: &Shared) {
    let suppressed = Family::<IfaceLabels, Counter>::default();
    suppressed
        .get_or_create(&IfaceLabels {
            iface: shared.iface.clone(),
        })
        .inc_by(shared.suppressed.load(std::sync::atomic::Ordering::Relaxed));
    register_family(registry, &EVENTS_SUPPRESSED, suppressed);
    let top = Family::<PortLabels, Gauge>::default();
    for a in shared.store().top_ports() {
        top.get_or_create(&PortLabels {
            iface: shared.iface.clone(),
            proto: a.proto,
            port: a.port.to_string(),
            verdict: a.verdict,
        })
        .set(i64::try_from(a.packets).unwrap_or(i64::MAX));
    }
    register_family(registry, &TOP_DROPPED_PORT, top);
}
