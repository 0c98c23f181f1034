//! The host scenario: a client and a server namespace joined by a veth
//! pair, portguard on the server side, allowed and forbidden traffic over
//! real sockets, real protocol peers, and portguard's counters read from
//! its metrics endpoint. `cargo xtask run -- --scenario host` prints it; the
//! `lab` test binary's `host::` test and the package test assert on it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::atomic::AtomicBool,
    time::Duration,
};

use anyhow::Result;

use super::{
    MEDIA, METRICS, PeerResult, Proto, ROLES, check_interrupted,
    daemon::Session,
    metrics::{Scrape, sum},
    peers::{self, Client, PeerRun},
    report::{arrived_as_expected, differs, failed},
    send::{Payload, listen, send_case},
};
use crate::netns::{NetNs, addr, in_netns, veth_pair};

pub const CLIENT_IF: &str = "pgc0";
pub const SERVER_IF: &str = "pgs0";
pub const SERVER_IP: &str = "198.18.0.2";
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_IP: &str = "198.18.0.1";
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

#[derive(Debug)]
pub struct Case {
    pub proto: Proto,
    pub port: u16,
    pub allowed: bool,
    pub what: &'static str,
}

pub const CASES: [Case; 6] = [
    Case {
        proto: Proto::Tcp,
        port: 5061,
        allowed: true,
        what: "SIP over TLS (front-end)",
    },
    Case {
        proto: Proto::Udp,
        port: 3478,
        allowed: true,
        what: "STUN/TURN (client)",
    },
    Case {
        proto: Proto::Udp,
        port: 50_000,
        allowed: true,
        what: "media (client range narrowed to 50000-50019)",
    },
    Case {
        proto: Proto::Tcp,
        port: 3389,
        allowed: false,
        what: "RDP",
    },
    Case {
        proto: Proto::Udp,
        port: 161,
        allowed: false,
        what: "SNMP",
    },
    Case {
        proto: Proto::Tcp,
        port: 1433,
        allowed: false,
        what: "SQL Server",
    },
];

/// What one lab run saw.
#[derive(Debug)]
pub struct Report {
    pub client: String,
    pub server: String,
    pub sent: Vec<u32>,
    pub received: Vec<u32>,
    /// Scraped while portguard ran, after the socket traffic and before the peers.
    pub metrics: Option<Scrape>,
    /// portguard's stdout (its counter summary on exit).
    pub summary: String,
    /// Whether the interface was free of XDP after portguard exited.
    pub detached: bool,
    /// Real protocol peers (sipp, coturn's STUN client, curl over TLS).
    pub peers: Vec<PeerResult>,
}

impl Report {
    /// Per case: whether what arrived is what the policy says.
    pub fn case_ok(&self, i: usize) -> bool {
        arrived_as_expected(CASES[i].allowed, self.sent[i], self.received[i])
    }

    /// One line per case whose delivery differs from the policy: what was
    /// sent and received, and whether it is allowed.
    pub fn case_failures(&self) -> Vec<String> {
        CASES
            .iter()
            .enumerate()
            .filter(|&(i, _)| !self.case_ok(i))
            .map(|(i, case)| {
                format!(
                    "{} {} ({}): {}",
                    case.proto.name(),
                    case.port,
                    case.what,
                    differs(self.sent[i], self.received[i], case.allowed)
                )
            })
            .collect()
    }

    /// portguard's counters against what the listeners saw: (ok, text) lines.
    /// UDP is exact (nothing else sends UDP on this link); TCP retransmits
    /// SYNs, so its drops are at least the attempts.
    pub fn counter_checks(&self) -> Vec<(bool, String)> {
        let packets =
            |labels: &[(&str, &str)]| sum(self.metrics.as_ref(), "portguard_packets_total", labels);
        let udp_passed = packets(&[("proto", "udp"), ("verdict", "pass"), ("role", "!-")]);
        let udp_dropped = packets(&[
            ("proto", "udp"),
            ("verdict", "drop"),
            ("service", "port_not_allowed"),
        ]);
        let tcp_dropped = packets(&[("proto", "tcp"), ("verdict", "drop")]);
        let native = sum(
            self.metrics.as_ref(),
            "portguard_xdp_attached",
            &[("mode", "native")],
        );
        let (mut udp_received, mut udp_forbidden, mut tcp_forbidden) = (0, 0, 0);
        for (i, c) in CASES.iter().enumerate() {
            match (c.proto, c.allowed) {
                (Proto::Udp, true) => udp_received += self.received[i],
                (Proto::Udp, false) => udp_forbidden += self.sent[i],
                (Proto::Tcp, false) => tcp_forbidden += self.sent[i],
                (Proto::Tcp, true) => {}
            }
        }
        vec![
            (
                self.metrics.is_some(),
                format!("metrics endpoint answered on {METRICS}"),
            ),
            (
                native == 1.0,
                "portguard_xdp_attached{mode=\"native\"} = 1".to_string(),
            ),
            (
                udp_passed == f64::from(udp_received),
                format!("UDP passed by rules {udp_passed} = UDP datagrams received {udp_received}"),
            ),
            (
                udp_dropped == f64::from(udp_forbidden),
                format!(
                    "UDP dropped as port_not_allowed {udp_dropped} = forbidden UDP sent {udp_forbidden}"
                ),
            ),
            (
                tcp_dropped >= f64::from(tcp_forbidden),
                format!(
                    "TCP dropped {tcp_dropped} >= forbidden connection attempts {tcp_forbidden}"
                ),
            ),
            (
                self.detached,
                format!("no XDP program left on {SERVER_IF} after SIGINT"),
            ),
        ]
    }

    /// Mismatches that need no metrics: the cases, the peers, the detach.
    /// The demo falls back to these when the endpoint does not answer.
    pub fn mismatches_without_metrics(&self) -> usize {
        (0..CASES.len()).filter(|i| !self.case_ok(*i)).count()
            + self.peers.iter().filter(|p| !p.ok).count()
            + usize::from(!self.detached)
    }

    pub fn mismatches(&self) -> usize {
        (0..CASES.len()).filter(|i| !self.case_ok(*i)).count()
            + failed(&self.counter_checks(), &self.peers)
    }
}

/// Options of one lab run.
pub struct Options<'a> {
    pub bin: &'a Path,
    /// Polled so that Ctrl-C ends the run early (the namespaces are removed on return).
    pub interrupted: &'a AtomicBool,
    /// Also drive sipp, turnutils_stunclient and curl (they must be installed).
    pub peers: bool,
    /// Print the counters every half second while traffic flows.
    pub live: bool,
}

fn case_addr(case: &Case) -> SocketAddr {
    SocketAddr::from((SERVER_V4, case.port))
}

/// `portguard run` on the server's interface.
fn portguard_args() -> Vec<String> {
    #[rustfmt::skip]
    let args = [
        "run", "--iface", SERVER_IF, "--role", ROLES, "--client-media-ports", MEDIA,
        "--xdp-mode", "native", "--metrics-addr", METRICS,
    ];
    args.map(String::from).into()
}

/// Runs the lab once. Every guard (namespaces, portguard, listeners, peers)
/// is dropped on return, on any path: portguard first, then the namespaces
/// with their interfaces.
pub fn run(opts: &Options<'_>) -> Result<Report> {
    let interrupted = opts.interrupted;
    let client = NetNs::new("pg-client")?;
    let server = NetNs::new("pg-server")?;
    veth_pair(&client, CLIENT_IF, &server, SERVER_IF)?;
    addr(&client, CLIENT_IF, &format!("{CLIENT_IP}/24"))?;
    addr(&client, CLIENT_IF, "2001:db8::1/64")?;
    addr(&server, SERVER_IF, &format!("{SERVER_IP}/24"))?;
    addr(&server, SERVER_IF, "2001:db8::2/64")?;

    let session = Session::start(
        &server,
        &[SERVER_IF],
        Some(opts.bin),
        &portguard_args(),
        opts.live,
        interrupted,
    )?;
    let listeners = CASES
        .iter()
        .map(|c| listen(&server, c.proto, case_addr(c)))
        .collect::<Result<Vec<_>>>()?;
    let sent = in_netns(&client, || {
        CASES
            .iter()
            .map(|c| send_case(c.proto, Payload::Rtp, IpAddr::V4(CLIENT_V4), case_addr(c)))
            .collect::<Vec<u32>>()
    })?;
    // Let the last packets land before the listeners stop. The counters are
    // read now, while portguard runs and before the peers add their own traffic.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = session.scrape();
    let received: Vec<u32> = listeners.into_iter().map(|l| l.finish().count).collect();
    check_interrupted(interrupted)?;
    // The peers' servers take the listeners' ports (5061, 3478) now.
    let peers = if opts.peers {
        run_peers(&client, &server)?
    } else {
        Vec::new()
    };
    let ended = session.end()?;
    Ok(Report {
        client: client.name().into(),
        server: server.name().into(),
        sent,
        received,
        metrics,
        summary: ended.summary,
        detached: ended.detached,
        peers,
    })
}

/// SIP over TCP 5061 with sipp, STUN over UDP 3478 with coturn, HTTPS on 443
/// with curl against openssl's test server: each must get through.
fn run_peers(client: &NetNs, server: &NetNs) -> Result<Vec<PeerResult>> {
    peers::in_scratch(server, |dir| {
        let _sip = peers::sipp_server(server, SERVER_IP, "5061", &[])?;
        let _stun = peers::turnserver(server, &["-L", SERVER_IP, "-p", "3478", "--stun-only"])?;
        let cert = peers::test_certificate(dir)?;
        let _https = peers::https_server(server, &format!("{SERVER_IP}:443"), &cert)?;
        // The servers bind after they start: the clients go once they are there.
        let sockets = ["5061", "3478", "443"].map(|port| format!("{SERVER_IP}:{port}"));
        peers::wait_listening(server, &sockets, Duration::from_secs(15))?;
        let run = |name: &str, target: &str, client: Client| PeerRun {
            name: name.into(),
            target: target.into(),
            allowed: true,
            client,
        };
        let runs = vec![
            run(
                "sipp (5 SIP calls)",
                "tcp 5061",
                Client::sipp_calls(&format!("{SERVER_IP}:5061"), CLIENT_IP, &[], 10).within(15),
            ),
            run(
                "turnutils_stunclient (STUN binding)",
                "udp 3478",
                Client::stun_binding(None, SERVER_IP),
            ),
            run(
                "curl (HTTPS GET)",
                "tcp 443",
                Client::https_get(&[], &format!("https://{SERVER_IP}/")),
            ),
        ];
        peers::run_side_by_side(client, runs, true)
    })
}
