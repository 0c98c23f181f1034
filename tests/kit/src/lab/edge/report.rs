//! What one run of the edge lab saw, and the checks of portguard's per-leg
//! counters against it.

use super::{Case, DMZ_IF, EXT_IF, Expect, Family, Host, Refusal, Side, traffic::MEDIA_ANSWERS};
use crate::lab::{
    METRICS, PeerResult, Proto,
    metrics::{Scrape, sum},
    report::{arrived_as_expected, differs, failed},
};

/// What one row of traffic did.
#[derive(Debug, Clone)]
pub struct Row {
    pub family: Family,
    pub proto: Proto,
    pub from: Host,
    pub to: Host,
    pub port: u16,
    pub what: &'static str,
    pub expect: Expect,
    /// UDP: datagrams; TCP: connection attempts.
    pub sent: u32,
    /// UDP: datagrams; TCP: connections over which the messages arrived.
    pub received: u32,
}

impl Row {
    pub(super) fn from_case(family: Family, c: &Case, sent: u32, received: u32) -> Row {
        Row {
            family,
            proto: c.proto,
            from: c.from,
            to: c.to,
            port: c.port,
            what: c.what,
            expect: c.expect,
            sent,
            received,
        }
    }
}

/// What one run of the edge lab saw.
#[derive(Debug)]
pub struct Report {
    /// Whether portguard ran (without it every row is expected to arrive).
    pub firewall: bool,
    pub namespaces: [String; 3],
    pub rows: Vec<Row>,
    /// Scraped while portguard ran, after the socket traffic and before the peers.
    pub metrics: Option<Scrape>,
    pub summary: String,
    /// Whether both legs were free of XDP after portguard exited.
    pub detached: bool,
    pub peers: Vec<PeerResult>,
}

impl Report {
    /// Whether a row should have arrived: without portguard, everything does.
    pub fn expected(&self, row: &Row) -> bool {
        row.expect.delivered() || !self.firewall
    }

    pub fn row_ok(&self, row: &Row) -> bool {
        arrived_as_expected(self.expected(row), row.sent, row.received)
    }

    /// A known gap that held in this run (portguard dropped the row that the
    /// catalog allows): why it is dropped.
    pub fn gap(&self, row: &Row) -> Option<&'static str> {
        match row.expect {
            Expect::Gap(_, why) if self.firewall && self.row_ok(row) => Some(why),
            _ => None,
        }
    }

    /// One line per row whose delivery differs from what is expected of it.
    pub fn case_failures(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| !self.row_ok(r))
            .map(|r| {
                let how = match r.expect {
                    Expect::Gap(..) if self.firewall => format!(
                        "sent {} received {}: the known gap is closed, portguard no longer drops it; make the case Allowed (and its docs/lab.md row)",
                        r.sent, r.received
                    ),
                    _ => differs(r.sent, r.received, self.expected(r)),
                };
                format!(
                    "{} {} {} -> {} port {} ({}): {how}",
                    r.family.name(),
                    r.proto.name(),
                    r.from.name(),
                    r.to.name(),
                    r.port,
                    r.what,
                )
            })
            .collect()
    }

    /// Sum over the rows that match: what they sent, or received.
    fn total(&self, pred: impl Fn(&Row) -> bool, field: impl Fn(&Row) -> u32) -> u32 {
        self.rows.iter().filter(|r| pred(r)).map(field).sum()
    }

    fn packets(&self, iface: &str, labels: &[(&str, &str)]) -> f64 {
        let mut all = vec![("iface", iface)];
        all.extend_from_slice(labels);
        sum(self.metrics.as_ref(), "portguard_packets_total", &all)
    }

    /// portguard's per-leg counters against what the receivers saw: (ok,
    /// text). UDP is exact on each leg (only the lab sends UDP here, and
    /// the peers run after the scrape); TCP retransmits SYNs, so its counts
    /// are lower bounds.
    pub fn counter_checks(&self) -> Vec<(bool, String)> {
        if !self.firewall {
            return Vec::new();
        }
        let inbound = |r: &Row| r.from.side() == Side::Internet;
        let outbound = |r: &Row| r.from.side() == Side::Dmz;
        let udp = |r: &Row| r.proto == Proto::Udp;
        let tcp = |r: &Row| r.proto == Proto::Tcp;
        let sent = |r: &Row| r.sent;
        let received = |r: &Row| r.received;
        let udp_in_arrived = self.total(|r| inbound(r) && udp(r), received);
        let delivered = |r: &Row| r.expect.delivered();
        let udp_in_forbidden = self.total(|r| inbound(r) && udp(r) && !delivered(r), sent);
        let udp_out_arrived = self.total(|r| outbound(r) && udp(r), received);
        let udp_out_forbidden = self.total(|r| outbound(r) && udp(r) && !delivered(r), sent);
        let answers = self.total(
            |r| inbound(r) && udp(r) && r.what == MEDIA_ANSWERS,
            received,
        );
        let tcp_in_forbidden = self.total(|r| inbound(r) && tcp(r) && !delivered(r), sent);
        let tcp_out_forbidden = self.total(|r| outbound(r) && tcp(r) && !delivered(r), sent);
        // Connections to the DMZ that opened: each one's SYN-ACK comes back
        // on the DMZ leg as established; likewise outbound ones on the EXT leg.
        let tcp_in_opened = self.total(
            |r| inbound(r) && tcp(r) && r.to != Host::Appliance && delivered(r),
            received,
        );
        let tcp_out_opened = self.total(|r| outbound(r) && tcp(r) && delivered(r), received);

        let p = |iface: &str, labels: &[(&str, &str)]| self.packets(iface, labels);
        let native = |iface: &str| {
            sum(
                self.metrics.as_ref(),
                "portguard_xdp_attached",
                &[("iface", iface), ("mode", "native")],
            )
        };
        let mut checks = vec![(
            self.metrics.is_some(),
            format!("metrics endpoint answered on {METRICS} in the appliance namespace"),
        )];
        for iface in [EXT_IF, DMZ_IF] {
            checks.push((
                native(iface) == 1.0,
                format!("portguard_xdp_attached{{iface=\"{iface}\",mode=\"native\"}} = 1"),
            ));
        }
        let f = f64::from;
        let udp_pass = [("proto", "udp"), ("verdict", "pass")];
        let udp_drop = [("proto", "udp"), ("verdict", "drop")];
        let tcp_drop = [("proto", "tcp"), ("verdict", "drop")];
        let tcp_est = [
            ("proto", "tcp"),
            ("verdict", "pass"),
            ("service", "established"),
        ];
        let udp_est = [
            ("proto", "udp"),
            ("verdict", "pass"),
            ("service", "established"),
        ];
        let (ext_udp_pass, dmz_udp_pass) = (p(EXT_IF, &udp_pass), p(DMZ_IF, &udp_pass));
        let (ext_udp_drop, dmz_udp_drop) = (p(EXT_IF, &udp_drop), p(DMZ_IF, &udp_drop));
        let (ext_tcp_drop, dmz_tcp_drop) = (p(EXT_IF, &tcp_drop), p(DMZ_IF, &tcp_drop));
        let (ext_tcp_est, dmz_tcp_est) = (p(EXT_IF, &tcp_est), p(DMZ_IF, &tcp_est));
        let ext_udp_est = p(EXT_IF, &udp_est);
        checks.extend([
            (
                ext_udp_pass == f(udp_in_arrived),
                format!(
                    "{EXT_IF}: UDP passed {ext_udp_pass} = UDP datagrams that reached the DMZ {udp_in_arrived}"
                ),
            ),
            (
                ext_udp_est == f(answers),
                format!(
                    "{EXT_IF}: UDP passed as established {ext_udp_est} = media answers that reached the A/V Edge {answers}"
                ),
            ),
            (
                ext_udp_drop == f(udp_in_forbidden),
                format!(
                    "{EXT_IF}: UDP dropped {ext_udp_drop} = forbidden UDP sent from the internet {udp_in_forbidden}"
                ),
            ),
            (
                dmz_udp_pass == f(udp_out_arrived),
                format!(
                    "{DMZ_IF}: UDP passed {dmz_udp_pass} = UDP datagrams that reached the internet {udp_out_arrived}"
                ),
            ),
            (
                dmz_udp_drop == f(udp_out_forbidden),
                format!(
                    "{DMZ_IF}: UDP dropped {dmz_udp_drop} = forbidden UDP sent from the DMZ {udp_out_forbidden}"
                ),
            ),
            (
                ext_tcp_drop >= f(tcp_in_forbidden),
                format!(
                    "{EXT_IF}: TCP dropped {ext_tcp_drop} >= forbidden connection attempts from the internet {tcp_in_forbidden}"
                ),
            ),
            (
                dmz_tcp_drop >= f(tcp_out_forbidden),
                format!(
                    "{DMZ_IF}: TCP dropped {dmz_tcp_drop} >= forbidden connection attempts from the DMZ {tcp_out_forbidden}"
                ),
            ),
            (
                dmz_tcp_est >= f(tcp_in_opened) && tcp_in_opened > 0,
                format!(
                    "{DMZ_IF}: TCP answers passed as established {dmz_tcp_est} >= connections opened into the DMZ {tcp_in_opened}"
                ),
            ),
            (
                ext_tcp_est >= f(tcp_out_opened) && tcp_out_opened > 0,
                format!(
                    "{EXT_IF}: TCP answers passed as established {ext_tcp_est} >= connections opened out of the DMZ {tcp_out_opened}"
                ),
            ),
        ]);
        // Each drop under the reason it is expected for: a stranger on an
        // open port is `peer_not_allowed`, not `port_not_allowed`. UDP
        // exactly, TCP at least (SYNs are retransmitted).
        for (iface, from) in [(EXT_IF, Side::Internet), (DMZ_IF, Side::Dmz)] {
            for refusal in [Refusal::Port, Refusal::Peer] {
                let refused = |r: &Row, proto: Proto| {
                    r.from.side() == from && r.proto == proto && r.expect.refusal() == Some(refusal)
                };
                let tcp_refused = self.total(|r| refused(r, Proto::Tcp), sent);
                let udp_refused = self.total(|r| refused(r, Proto::Udp), sent);
                let reason = refusal.label();
                let drops = |proto| {
                    p(
                        iface,
                        &[("proto", proto), ("verdict", "drop"), ("service", reason)],
                    )
                };
                let (tcp_drops, udp_drops) = (drops("tcp"), drops("udp"));
                checks.push((
                    tcp_drops >= f(tcp_refused) && udp_drops == f(udp_refused),
                    format!(
                        "{iface}: TCP dropped as {reason} {tcp_drops} >= attempts of the cases it refuses {tcp_refused}; UDP {udp_drops} = datagrams of such cases {udp_refused}"
                    ),
                ));
            }
        }
        checks.push((
            self.detached,
            format!("no XDP program left on {EXT_IF} or {DMZ_IF} after SIGINT"),
        ));
        checks
    }

    pub fn mismatches(&self) -> usize {
        self.rows.iter().filter(|r| !self.row_ok(r)).count()
            + failed(&self.counter_checks(), &self.peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::edge::traffic::MEDIA_OUT;

    const ALLOWED: Expect = Expect::Allowed;
    const PORT: Expect = Expect::Forbidden(Refusal::Port);
    const PEER: Expect = Expect::Forbidden(Refusal::Peer);
    const GAP: Expect = Expect::Gap(Refusal::Peer, "a gap");

    fn row(proto: Proto, from: Host, to: Host, what: &'static str, expect: Expect, n: u32) -> Row {
        Row {
            family: Family::V4,
            proto,
            from,
            to,
            port: 1,
            what,
            expect,
            sent: n,
            received: if expect.delivered() { n } else { 0 },
        }
    }

    fn report(metrics: &str) -> Report {
        Report {
            firewall: true,
            namespaces: Default::default(),
            rows: vec![
                row(
                    Proto::Udp,
                    Host::Internet,
                    Host::AvEdge,
                    "stun",
                    ALLOWED,
                    20,
                ),
                row(Proto::Udp, Host::Internet, Host::WebConf, "stun", PORT, 20),
                row(
                    Proto::Udp,
                    Host::AvEdge,
                    Host::Internet,
                    MEDIA_OUT,
                    ALLOWED,
                    20,
                ),
                row(
                    Proto::Udp,
                    Host::Internet,
                    Host::AvEdge,
                    MEDIA_ANSWERS,
                    ALLOWED,
                    20,
                ),
                row(
                    Proto::Tcp,
                    Host::Internet,
                    Host::AccessEdge,
                    "sip",
                    ALLOWED,
                    1,
                ),
                row(
                    Proto::Tcp,
                    Host::AccessEdge,
                    Host::Internet,
                    "sip",
                    ALLOWED,
                    1,
                ),
                row(Proto::Tcp, Host::Stranger, Host::AccessEdge, "sip", PEER, 1),
                row(Proto::Tcp, Host::AccessEdge, Host::Stranger, "sip", PEER, 1),
                row(
                    Proto::Tcp,
                    Host::Microsoft365,
                    Host::AccessEdge,
                    "sip",
                    GAP,
                    1,
                ),
            ],
            metrics: Some(Scrape::parse(metrics)),
            summary: String::new(),
            detached: true,
            peers: Vec::new(),
        }
    }

    const AGREEING: &str = r#"portguard_xdp_attached{iface="pgext0",mode="native"} 1
portguard_xdp_attached{iface="pgdmz0",mode="native"} 1
portguard_packets_total{iface="pgext0",proto="udp",role="av-edge-external",service="s",verdict="pass"} 20
portguard_packets_total{iface="pgext0",proto="udp",role="-",service="established",verdict="pass"} 20
portguard_packets_total{iface="pgext0",proto="udp",role="-",service="port_not_allowed",verdict="drop"} 20
portguard_packets_total{iface="pgdmz0",proto="udp",role="av-edge-external",service="m",verdict="pass"} 20
portguard_packets_total{iface="pgdmz0",proto="tcp",role="-",service="established",verdict="pass"} 2
portguard_packets_total{iface="pgext0",proto="tcp",role="-",service="established",verdict="pass"} 2
portguard_packets_total{iface="pgext0",proto="tcp",role="-",service="peer_not_allowed",verdict="drop"} 3
portguard_packets_total{iface="pgext0",proto="tcp",role="-",service="port_not_allowed",verdict="drop"} 1
portguard_packets_total{iface="pgdmz0",proto="tcp",role="-",service="peer_not_allowed",verdict="drop"} 1
"#;

    #[test]
    fn counters_that_agree_with_the_receivers_pass_every_check() {
        let r = report(AGREEING);
        let failed: Vec<_> = r
            .counter_checks()
            .into_iter()
            .filter(|(ok, _)| !ok)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(r.mismatches(), 0);
    }

    #[test]
    fn a_counter_on_the_wrong_leg_or_verdict_is_a_mismatch() {
        // The media answers counted as passed by a rule instead of as
        // established; and the forbidden STUN passed on the DMZ leg.
        let wrong = AGREEING
            .replace(
                r#"role="-",service="established",verdict="pass"} 20"#,
                r#"role="av-edge-external",service="x",verdict="pass"} 20"#,
            )
            .replace(
                r#"iface="pgext0",proto="udp",role="-",service="port_not_allowed""#,
                r#"iface="pgdmz0",proto="udp",role="-",service="port_not_allowed""#,
            );
        let failed: Vec<String> = report(&wrong)
            .counter_checks()
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, text)| text)
            .collect();
        // The established check, the leg totals, and the two legs' drops
        // as port_not_allowed.
        assert_eq!(failed.len(), 5, "{failed:#?}");
        assert!(failed[0].contains("established"), "{failed:#?}");
        for leg in ["pgext0", "pgdmz0"] {
            assert!(
                failed
                    .iter()
                    .any(|f| f.starts_with(&format!("{leg}: TCP dropped as port_not_allowed"))),
                "{failed:#?}"
            );
        }
        assert!(
            failed
                .iter()
                .any(|f| f.starts_with("pgext0: UDP dropped 0")),
            "{failed:#?}"
        );
        assert!(
            failed
                .iter()
                .any(|f| f.starts_with("pgdmz0: UDP dropped 20")),
            "{failed:#?}"
        );
    }

    #[test]
    fn a_stranger_dropped_for_its_port_instead_of_its_peer_is_a_mismatch() {
        let wrong = AGREEING.replace(
            r#"iface="pgext0",proto="tcp",role="-",service="peer_not_allowed",verdict="drop"} 3"#,
            r#"iface="pgext0",proto="tcp",role="-",service="port_not_allowed",verdict="drop"} 3"#,
        );
        let failed: Vec<String> = report(&wrong)
            .counter_checks()
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, text)| text)
            .collect();
        assert_eq!(
            failed,
            vec![
                "pgext0: TCP dropped as peer_not_allowed 0 >= attempts of the cases it refuses 2; UDP 0 = datagrams of such cases 0"
            ],
            "the stranger's and Microsoft 365's SYNs counted as port_not_allowed"
        );
    }

    #[test]
    fn a_known_gap_holds_while_dropped_and_fails_once_it_arrives() {
        let mut r = report(AGREEING);
        let gap = r.rows.len() - 1;
        assert_eq!(r.gap(&r.rows[gap]), Some("a gap"));
        assert!(r.case_failures().is_empty(), "{:?}", r.case_failures());
        r.rows[gap].received = 1;
        assert_eq!(r.gap(&r.rows[gap]), None);
        let failures = r.case_failures();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(
            failures[0].contains("the known gap is closed"),
            "{failures:?}"
        );
    }

    #[test]
    fn without_the_firewall_forbidden_rows_are_expected_to_arrive() {
        let mut r = report("");
        r.firewall = false;
        for row in &mut r.rows {
            row.received = row.sent;
        }
        assert!(r.case_failures().is_empty(), "{:?}", r.case_failures());
        assert!(r.counter_checks().is_empty());
        assert_eq!(
            r.gap(&r.rows[r.rows.len() - 1]),
            None,
            "no firewall, no gap"
        );
        r.firewall = true;
        // The forbidden STUN, the stranger both ways, and the gap.
        assert_eq!(r.case_failures().len(), 4, "{:?}", r.case_failures());
    }
}
