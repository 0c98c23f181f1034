//! What one run of the attack scenario saw: the plants, the idle and new
//! connections after each phase, the floods' figures, the fragmented
//! datagrams, and the checks on the flow tables.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use super::{Firewall, IDLE_FLOWS, flood::Flood};
use crate::lab::{Proto, edge::Family};

/// Where portguard ran: on the appliance's two legs, or on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Appliance,
    Host,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Appliance => "appliance",
            Mode::Host => "host",
        }
    }
}

/// One plant: the frames an attacker sent to open a port, then what it
/// sent through the port it hoped to have opened, and what reached the
/// target (its listener, and a capture on the target's interface).
#[derive(Clone, Debug)]
pub struct PlantRow {
    pub mode: Mode,
    pub family: Family,
    /// The case, as the issue names it.
    pub case: &'static str,
    /// The appliance's rp_filter while it ran (appliance mode, IPv4: the
    /// kernel has no reverse-path filter for IPv6).
    pub rp_filter: Option<u8>,
    /// The attacker's own address (each case has its own, so that cases
    /// running side by side are told apart at the listeners).
    pub attacker: IpAddr,
    pub proto: Proto,
    /// `address:port` of the target.
    pub target: String,
    /// Datagrams or segments sent at the target after the plant.
    pub sent: u32,
    /// Counted by the target's listener from the attacker (UDP: datagrams;
    /// TCP: connections that carried data).
    pub listener: u32,
    /// Frames from the attacker to the target's port seen on the target's
    /// interface.
    pub captured: u32,
}

impl PlantRow {
    /// Whether anything got through to the target.
    pub fn reached(&self) -> bool {
        self.listener > 0 || self.captured > 0
    }
}

/// One check of a connection: a message each way, `first` speaking first.
#[derive(Clone, Debug)]
pub struct ConnRow {
    pub mode: Mode,
    /// When: "before the floods", "after the IPv4 flood", "during ...".
    pub phase: String,
    pub what: String,
    /// Who spoke first, in words.
    pub first: String,
    pub expected: bool,
    pub worked: bool,
    pub detail: String,
}

impl ConnRow {
    pub fn ok(&self) -> bool {
        self.expected == self.worked
    }
}

/// One flood and what the flow tables did under it.
#[derive(Clone, Debug)]
pub struct FloodRow {
    pub mode: Mode,
    pub name: String,
    pub frames: u64,
    /// Distinct source addresses among the frames.
    pub source_addresses: u64,
    /// Distinct (source address, source port) pairs among the frames.
    pub source_endpoints: u64,
    pub duration: Duration,
    /// Frames portguard counted on the leg the flood arrived on (the
    /// veth may drop some before XDP sees them).
    pub counted: u64,
    /// Change of the unconfirmed table's evictions and refusals over the
    /// flood (from `portguard stats`).
    pub unconfirmed_evictions: u64,
    pub unconfirmed_refusals: u64,
    pub confirmed_before: u64,
    pub confirmed_after: u64,
    pub unconfirmed_after: u64,
}

impl FloodRow {
    /// `flood`'s row: sent in `took`, `counted` frames of its protocol
    /// counted on its leg, and the flow tables from `portguard stats`
    /// before and after it.
    pub(super) fn measured(
        mode: Mode,
        name: &str,
        flood: &Flood,
        took: Duration,
        counted: u64,
        (before, after): (&FlowStats, &FlowStats),
    ) -> FloodRow {
        let (source_addresses, source_endpoints) = flood.distinct();
        FloodRow {
            mode,
            name: name.to_string(),
            frames: flood.frames,
            source_addresses,
            source_endpoints,
            duration: took,
            counted,
            unconfirmed_evictions: after
                .unconfirmed
                .evictions
                .saturating_sub(before.unconfirmed.evictions),
            unconfirmed_refusals: after
                .unconfirmed
                .refusals
                .saturating_sub(before.unconfirmed.refusals),
            confirmed_before: before.confirmed.entries,
            confirmed_after: after.confirmed.entries,
            unconfirmed_after: after.unconfirmed.entries,
        }
    }

    /// The check that the idle connections' confirmed entries outlived
    /// the flood.
    pub(super) fn confirmed_stayed(&self) -> (bool, String) {
        let whose = match self.mode {
            Mode::Appliance => "",
            Mode::Host => "host, ",
        };
        (
            self.confirmed_after >= IDLE_FLOWS,
            format!(
                "{whose}{}: the confirmed entries stayed ({} before, {} after, >= {IDLE_FLOWS})",
                self.name, self.confirmed_before, self.confirmed_after
            ),
        )
    }

    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// Legitimate fragmented datagrams sent during a fragment flood.
#[derive(Clone, Debug)]
pub struct FragmentRow {
    pub family: Family,
    pub what: String,
    pub flood_frames: u64,
    pub sent: u32,
    pub received: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl FragmentRow {
    pub fn ok(&self) -> bool {
        self.sent > 0 && self.received == self.sent && self.bytes_received == self.bytes_sent
    }
}

/// What one run of the attack scenario saw.
#[derive(Debug)]
pub struct Report {
    pub firewall: Firewall,
    pub namespaces: Vec<String>,
    pub plants: Vec<PlantRow>,
    pub conns: Vec<ConnRow>,
    pub floods: Vec<FloodRow>,
    pub fragments: Vec<FragmentRow>,
    /// Checks on the flow tables and the daemon: (ok, text).
    pub checks: Vec<(bool, String)>,
    /// `portguard stats` of the appliance after the floods.
    pub stats: String,
    pub duration: Duration,
}

impl Report {
    pub(super) fn new(firewall: Firewall) -> Report {
        Report {
            firewall,
            namespaces: Vec::new(),
            plants: Vec::new(),
            conns: Vec::new(),
            floods: Vec::new(),
            fragments: Vec::new(),
            checks: Vec::new(),
            stats: String::new(),
            duration: Duration::ZERO,
        }
    }

    /// Whether a plant did what this run expects: with a firewall the port
    /// stays closed; without one the lab itself is checked, so what the
    /// attacker sends must reach the target (its listener or its wire).
    pub fn plant_ok(&self, row: &PlantRow) -> bool {
        match self.firewall {
            Firewall::None => row.reached(),
            Firewall::Portguard | Firewall::Nftables => !row.reached(),
        }
    }

    /// (held, total) plants.
    pub fn plants_held(&self) -> (usize, usize) {
        let held = self.plants.iter().filter(|r| self.plant_ok(r)).count();
        (held, self.plants.len())
    }

    /// One line per row or check that differs from what was expected.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.plants.iter().filter(|r| !self.plant_ok(r)) {
            let mut line = format!(
                "plant ({} mode, {}, {}) from {}: {} {}: sent {}, the listener got {}, the capture saw {}",
                r.mode.name(),
                r.family.name(),
                r.case,
                r.attacker,
                r.proto.name(),
                r.target,
                r.sent,
                r.listener,
                r.captured
            );
            if let Some(rp) = r.rp_filter {
                let _ = write!(line, " (rp_filter={rp})");
            }
            line.push_str(if self.firewall == Firewall::None {
                ": without a firewall it must arrive"
            } else {
                ": the port must stay closed"
            });
            out.push(line);
        }
        for c in self.conns.iter().filter(|c| !c.ok()) {
            out.push(format!(
                "connection ({} mode) {}: {}, {} first: {} but {} expected ({})",
                c.mode.name(),
                c.phase,
                c.what,
                c.first,
                if c.worked { "worked" } else { "failed" },
                if c.expected { "working" } else { "failing" },
                c.detail
            ));
        }
        for f in self.fragments.iter().filter(|f| !f.ok()) {
            out.push(format!(
                "fragmented datagrams ({}, {}): {} of {} arrived, {} of {} bytes",
                f.family.name(),
                f.what,
                f.received,
                f.sent,
                f.bytes_received,
                f.bytes_sent
            ));
        }
        for (ok, text) in &self.checks {
            if !ok {
                out.push(format!("check: {text}"));
            }
        }
        out
    }
}

/// The flow tables as `portguard stats` prints them: one row per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableFill {
    pub entries: u64,
    pub capacity: u64,
    pub evictions: u64,
    pub refusals: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub confirmed: TableFill,
    pub unconfirmed: TableFill,
    pub fragments: TableFill,
}

impl FlowStats {
    /// Reads the flow-table block of `portguard stats`: rows named `flows
    /// (confirmed)`, `flows (unconfirmed)` and `fragments`, each with
    /// entries, capacity, fill, evictions and refusals.
    pub fn parse(text: &str) -> Option<FlowStats> {
        let row = |name: &str| -> Option<TableFill> {
            let line = text.lines().find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(char::is_whitespace))
            })?;
            let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
            let n = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some(TableFill {
                entries: n(0)?,
                capacity: n(1)?,
                evictions: n(3)?,
                refusals: n(4)?,
            })
        };
        Some(FlowStats {
            confirmed: row("flows (confirmed)")?,
            unconfirmed: row("flows (unconfirmed)")?,
            fragments: row("fragments")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "pgaext0\nsome counters\n\ntable                       entries   capacity   fill    evictions     refusals
flows (confirmed)                 6     262144   0.0%            0            0
flows (unconfirmed)           65536      65536 100.0%       194560         8123
fragments                        12       8192   0.1%            0         1500
";

    #[test]
    fn the_flow_table_block_of_stats_reads_back() {
        let s = FlowStats::parse(STATS).unwrap_or_else(|| panic!("no flow tables in {STATS}"));
        assert_eq!(
            s.confirmed,
            TableFill {
                entries: 6,
                capacity: 262_144,
                evictions: 0,
                refusals: 0
            }
        );
        assert_eq!(s.unconfirmed.evictions, 194_560);
        assert_eq!(s.unconfirmed.refusals, 8123);
        assert_eq!(s.fragments.refusals, 1500);
        assert_eq!(FlowStats::parse("no tables here"), None);
    }

    fn plant(listener: u32, captured: u32) -> PlantRow {
        PlantRow {
            mode: Mode::Appliance,
            family: Family::V4,
            case: "c",
            rp_filter: Some(2),
            attacker: IpAddr::from([198, 18, 1, 100]),
            proto: Proto::Udp,
            target: "198.18.2.10:161".into(),
            sent: 20,
            listener,
            captured,
        }
    }

    #[test]
    fn a_plant_holds_when_nothing_arrives_and_the_control_when_something_does() {
        let mut r = Report::new(Firewall::Portguard);
        r.plants = vec![plant(0, 0), plant(0, 3), plant(20, 20)];
        assert_eq!(r.plants_held(), (1, 3));
        assert_eq!(r.failures().len(), 2, "{:?}", r.failures());
        r.firewall = Firewall::None;
        assert_eq!(r.plants_held(), (2, 3), "the control wants them to arrive");
    }
}
