//! Turning raw counter entries into labelled rows for the summary, `stats`
//! and the metrics endpoint.

use std::{collections::BTreeMap, fmt::Write as _};

use classifier_common::{
    COUNTER_ENTRIES, Counter, PCLASS_NAMES, PCLASS_UDP, REASON_COUNT, VERDICT_COUNT, Verdict,
    decode_media_counter, decode_reason_counter,
    media::{MEDIA_INDEX_MASK, MEDIA_REFUSALS, MEDIA_SLOT_FLAG},
    media_reason, reason_counter_index,
};

use crate::policy::SlotRegistry;

/// Labels of one counter row. Never a raw port or address: cardinality stays
/// bounded by the catalog.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    /// The catalog role, or `-` for packets no rule decided.
    pub(crate) role: String,
    /// The catalog service, or the reason for packets no rule decided.
    pub service: String,
    pub(crate) proto: String,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub rows: BTreeMap<RowKey, Counter>,
    /// Drops (and would-be drops) by reason, for `portguard_drops_total`.
    pub(crate) drops: BTreeMap<&'static str, Counter>,
}

/// The counter indexes worth reading: every slot the registry knows and
/// every reason entry.
pub(crate) fn indices(registry: &SlotRegistry) -> Vec<u32> {
    let mut v: Vec<u32> = Vec::new();
    for &slot in registry.slots().keys() {
        if slot & MEDIA_SLOT_FLAG == 0 {
            v.push(u32::from(slot));
            continue;
        }
        // A media rule's refusals (its passes count under its rule slot).
        let index = u32::from(slot & MEDIA_INDEX_MASK);
        for refusal in 0..MEDIA_REFUSALS {
            for verdict in [Verdict::Drop, Verdict::WouldDrop] {
                v.push(reason_counter_index(
                    media_reason(index, refusal),
                    verdict as u32,
                    PCLASS_UDP,
                ));
            }
        }
    }
    for r in 0..REASON_COUNT {
        for verdict in 0..VERDICT_COUNT {
            for pclass in 0..PCLASS_NAMES.len() as u32 {
                v.push(reason_counter_index(r, verdict, pclass));
            }
        }
    }
    v
}

/// [`indices`] in leg `leg`'s set of counters.
pub(crate) fn leg_indices(registry: &SlotRegistry, leg: u32) -> Vec<u32> {
    let base = leg * COUNTER_ENTRIES;
    indices(registry).into_iter().map(|i| i + base).collect()
}

/// Leg `leg`'s entries as the counter indexes they stand for.
pub(crate) fn rebase(raw: Vec<(u32, Counter)>, leg: u32) -> Vec<(u32, Counter)> {
    let base = leg * COUNTER_ENTRIES;
    raw.into_iter()
        .filter(|(i, _)| *i >= base)
        .map(|(i, c)| (i - base, c))
        .collect()
}

fn add(into: &mut Counter, c: &Counter) {
    into.packets += c.packets;
    into.bytes += c.bytes;
}

pub(crate) fn snapshot(registry: &SlotRegistry, raw: &[(u32, Counter)]) -> Snapshot {
    let mut snap = Snapshot::default();
    for (index, c) in raw {
        if c.packets == 0 {
            continue;
        }
        if let Some((reason, verdict, pclass)) = decode_reason_counter(*index) {
            let verdict = match verdict {
                0 => Verdict::Pass,
                1 => Verdict::Drop,
                _ => Verdict::WouldDrop,
            };
            let key = RowKey {
                role: "-".into(),
                service: reason.name().into(),
                proto: PCLASS_NAMES[pclass as usize].into(),
                verdict: verdict.name(),
            };
            add(snap.rows.entry(key).or_default(), c);
            if verdict != Verdict::Pass {
                add(snap.drops.entry(reason.name()).or_default(), c);
            }
        } else if let Some((media, verdict, reason)) = decode_media_counter(*index) {
            // A media rule's refusals: under the rule, and under their
            // reason too.
            let Some(rule) = registry.get(MEDIA_SLOT_FLAG | media as u16) else {
                continue;
            };
            let key = RowKey {
                role: rule.role.clone(),
                service: rule.service.clone(),
                proto: rule.proto.clone(),
                verdict: verdict.name(),
            };
            add(snap.rows.entry(key).or_default(), c);
            add(snap.drops.entry(reason.name()).or_default(), c);
        } else if let Some(rule) = u16::try_from(*index).ok().and_then(|s| registry.get(s)) {
            let key = RowKey {
                role: rule.role.clone(),
                service: rule.service.clone(),
                proto: rule.proto.clone(),
                verdict: Verdict::Pass.name(),
            };
            add(snap.rows.entry(key).or_default(), c);
        }
    }
    snap
}

impl Snapshot {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Snapshot) {
        for (k, c) in &other.rows {
            add(self.rows.entry(k.clone()).or_default(), c);
        }
        for (k, c) in &other.drops {
            add(self.drops.entry(k).or_default(), c);
        }
    }

    pub(crate) fn total(&self, verdict: &str) -> u64 {
        self.rows
            .iter()
            .filter(|(k, _)| k.verdict == verdict)
            .map(|(_, c)| c.packets)
            .sum()
    }

    /// An aligned table, biggest counts first.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&RowKey, &Counter)> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.packets.cmp(&a.1.packets).then(a.0.cmp(b.0)));
        let w_role = rows
            .iter()
            .map(|(k, _)| k.role.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let w_service = rows
            .iter()
            .map(|(k, _)| k.service.chars().count())
            .max()
            .unwrap_or(0)
            .max(7);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<w_role$}  {:<w_service$}  {:<5}  {:<10}  {:>12}  {:>14}",
            "ROLE", "SERVICE", "PROTO", "VERDICT", "PACKETS", "BYTES"
        );
        for (k, c) in rows {
            let _ = writeln!(
                out,
                "{:<w_role$}  {:<w_service$}  {:<5}  {:<10}  {:>12}  {:>14}",
                k.role, k.service, k.proto, k.verdict, c.packets, c.bytes
            );
        }
        let _ = write!(
            out,
            "total: {} passed, {} dropped, {} would drop",
            self.total("pass"),
            self.total("drop"),
            self.total("would_drop")
        );
        out
    }
}
