//! The edge lab's real protocol peers: sipp, coturn (a STUN binding and a
//! TURN relay through the A/V Edge) and curl, each allowed conversation and
//! a forbidden variant, against servers that listen.

use std::{path::Path, time::Duration};

use anyhow::Result;

use super::{FAMILIES, Family, Host, Topology};
use crate::{
    lab::host::{PeerResult, Server, client_run, last_line, start, test_certificate},
    netns::NetNs,
};

/// turnutils_peer's port for a relay the rules allow (in 50000-59999) and
/// for one they do not (coturn's default peer port).
const TURN_PEER_ALLOWED: u16 = 50_500;
const TURN_PEER_FORBIDDEN: u16 = 3480;
const TURN_USER: &str = "lab";
const TURN_REALM: &str = "portguard.lab";

/// One client run: what it is, whether the rules allow it, the command.
struct PeerRun {
    name: String,
    target: String,
    allowed: bool,
    program: &'static str,
    args: Vec<String>,
    secs: u64,
    /// Whether the output shows the conversation got through.
    through: fn(bool, &str) -> (bool, String),
}

/// sipp binds a media port (6000 unless told) even when no media flows:
/// the two sipp processes on one address (5061 and 5062, side by side)
/// need their own, as they need their own SIP port.
fn sipp_media_port(sip_port: u16) -> String {
    (6000 + (sip_port - 5061) * 100).to_string()
}

fn sipp_through(ok: bool, text: &str) -> (bool, String) {
    let calls = text
        .lines()
        .find(|l| l.contains("Successful call"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    let all = calls.as_deref().is_some_and(|c| c.ends_with(" 5"));
    (ok && all, calls.unwrap_or_else(|| last_line(text)))
}

fn stun_through(ok: bool, text: &str) -> (bool, String) {
    let mapped = text
        .lines()
        .find(|l| l.contains("reflexive addr"))
        .map(|l| l.trim().to_string());
    (
        ok && mapped.is_some(),
        mapped.unwrap_or_else(|| last_line(text)),
    )
}

fn curl_through(ok: bool, text: &str) -> (bool, String) {
    (
        ok && text.trim() == "200",
        format!(
            "HTTP {}",
            if text.trim().is_empty() {
                "-"
            } else {
                text.trim()
            }
        ),
    )
}

/// turnutils_uclient's last tally: `tot_send_msgs=N, tot_recv_msgs=M`.
fn turn_through(_ok: bool, text: &str) -> (bool, String) {
    let tally = text.lines().rev().find(|l| l.contains("tot_recv_msgs="));
    let number = |key: &str| -> Option<u32> {
        let rest = tally?.split(key).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (number("tot_send_msgs="), number("tot_recv_msgs=")) {
        (Some(sent), Some(recv)) => (
            sent > 0 && recv == sent,
            format!("{sent} relayed out, {recv} came back"),
        ),
        _ => (false, last_line(text)),
    }
}

/// The servers (in the DMZ and on the internet) and the clients, each client
/// against a server that listens, so a forbidden one fails because of
/// portguard alone. The clients run side by side.
pub(super) fn run_peers(topo: &Topology, firewall: bool) -> Result<Vec<PeerResult>> {
    // Named after a namespace: unique across runs and parallel tests.
    let dir = std::env::temp_dir().join(format!("portguard-{}", topo.dmz.name()));
    std::fs::create_dir_all(&dir)?;
    let result = run_peers_in(topo, &dir, firewall);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_peers_in(topo: &Topology, dir: &Path, firewall: bool) -> Result<Vec<PeerResult>> {
    let mut servers: Vec<Server> = Vec::new();
    for family in FAMILIES {
        let access = Host::AccessEdge.ip(family).to_string();
        for port in [5061, 5062] {
            let (port, media) = (port.to_string(), sipp_media_port(port));
            servers.push(start(
                &topo.dmz,
                "sipp",
                &[
                    "-sn", "uas", "-i", &access, "-p", &port, "-mp", &media, "-t", "t1", "-nostdin",
                ],
            )?);
        }
    }
    let (cert, key) = test_certificate(dir)?;
    // One wildcard listener per port serves every DMZ address, both families.
    for port in ["443", "4443"] {
        servers.push(start(
            &topo.dmz,
            "openssl",
            &[
                "s_server", "-accept", port, "-cert", &cert, "-key", &key, "-www", "-quiet",
            ],
        )?);
    }
    let pidfile = dir.join("turnserver.pid").to_string_lossy().into_owned();
    let user = format!("{TURN_USER}:{TURN_USER}");
    let mut turn = vec![
        "-p",
        "3478",
        "--min-port",
        "50000",
        "--max-port",
        "59999",
        "--lt-cred-mech",
        "--user",
        &user,
        "--realm",
        TURN_REALM,
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",
        "-n",
        "--no-stdout-log",
        "--log-file",
        "/dev/null",
        "--pidfile",
        &pidfile,
        "--allowed-peer-ip",
        "198.18.0.0-198.19.255.255",
        "--allowed-peer-ip",
        "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    let addrs: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| {
            [
                Host::AvEdge.ip(*f).to_string(),
                Host::WebConf.ip(*f).to_string(),
            ]
        })
        .collect();
    let relays: Vec<String> = FAMILIES
        .iter()
        .map(|f| Host::AvEdge.ip(*f).to_string())
        .collect();
    for a in &addrs {
        turn.extend(["-L", a]);
    }
    for r in &relays {
        turn.extend(["-E", r]);
    }
    servers.push(start(&topo.dmz, "turnserver", &turn)?);
    for port in [TURN_PEER_ALLOWED, TURN_PEER_FORBIDDEN] {
        let port = port.to_string();
        let mut args = vec!["-p", &port];
        let locals: Vec<String> = FAMILIES
            .iter()
            .map(|f| Host::Internet.ip(*f).to_string())
            .collect();
        for l in &locals {
            args.extend(["-L", l]);
        }
        servers.push(start(&topo.internet, "turnutils_peer", &args)?);
    }
    // The servers bind asynchronously; the clients retry within their deadline.
    std::thread::sleep(Duration::from_millis(700));

    let mut runs = Vec::new();
    for family in FAMILIES {
        runs.extend(peer_runs(family));
    }
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || peer_result(&topo.internet, run, firewall)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    drop(servers);
    Ok(results)
}

/// Runs one client and judges it: a forbidden one is OK when it did not
/// get through (without the firewall, every one should).
fn peer_result(internet: &NetNs, run: PeerRun, firewall: bool) -> Result<PeerResult> {
    let expected = run.allowed || !firewall;
    let args: Vec<&str> = run.args.iter().map(String::as_str).collect();
    let (ok, text) = client_run(internet, run.program, &args, run.secs)?;
    let (through, detail) = (run.through)(ok, &text);
    Ok(PeerResult {
        name: run.name,
        target: run.target,
        ok: through == expected,
        detail: match (through, expected) {
            (true, false) => format!("got through: {detail}"),
            (false, false) => format!("blocked ({detail})"),
            _ => detail,
        },
    })
}

fn peer_runs(family: Family) -> Vec<PeerRun> {
    let f = family.name();
    let host = |h: Host| h.ip(family).to_string();
    let url_host = |h: Host| match family {
        Family::V4 => host(h),
        Family::V6 => format!("[{}]", host(h)),
    };
    let sip = |port: u16, allowed| PeerRun {
        name: format!("sipp, 5 SIP calls ({f})"),
        target: format!("Access Edge tcp {port}"),
        allowed,
        program: "sipp",
        args: [
            "-sn",
            "uac",
            &format!("{}:{port}", url_host(Host::AccessEdge)),
            "-i",
            &host(Host::Internet),
            "-p",
            &(port + 10_000).to_string(),
            "-mp",
            &sipp_media_port(port),
            "-t",
            "t1",
            "-m",
            "5",
            "-r",
            "10",
            "-nostdin",
            "-timeout",
            "6s",
        ]
        .map(String::from)
        .into(),
        secs: 8,
        through: sipp_through,
    };
    let curl = |to: Host, port: u16, allowed| PeerRun {
        name: format!("curl, HTTPS GET ({f})"),
        target: format!("{} tcp {port}", to.name()),
        allowed,
        program: "curl",
        args: [
            "-sk",
            "--max-time",
            "4",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{}:{port}/", url_host(to)),
        ]
        .map(String::from)
        .into(),
        secs: 6,
        through: curl_through,
    };
    let stun = |to: Host, allowed| PeerRun {
        name: format!("turnutils_stunclient, STUN binding ({f})"),
        target: format!("{} udp 3478", to.name()),
        allowed,
        program: "turnutils_stunclient",
        args: ["-p", "3478", "-L", &host(Host::Internet), &host(to)]
            .map(String::from)
            .into(),
        secs: 5,
        through: stun_through,
    };
    let relay = |peer_port: u16, allowed| {
        let mut args: Vec<String> = [
            "-u",
            TURN_USER,
            "-w",
            TURN_USER,
            "-e",
            &host(Host::Internet),
            "-r",
            &peer_port.to_string(),
            "-n",
            "20",
            "-c",
            "-L",
            &host(Host::Internet),
        ]
        .map(String::from)
        .into();
        if family == Family::V6 {
            args.push("-x".into());
        }
        args.push(host(Host::AvEdge));
        PeerRun {
            name: format!("turnutils_uclient, TURN media relay ({f})"),
            target: format!("A/V Edge relay to udp {peer_port}"),
            allowed,
            program: "turnutils_uclient",
            args,
            secs: 8,
            through: turn_through,
        }
    };
    vec![
        sip(5061, true),
        curl(Host::AccessEdge, 443, true),
        curl(Host::ReverseProxy, 443, true),
        stun(Host::AvEdge, true),
        relay(TURN_PEER_ALLOWED, true),
        sip(5062, false),
        curl(Host::ReverseProxy, 4443, false),
        stun(Host::WebConf, false),
        relay(TURN_PEER_FORBIDDEN, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_outputs_are_read() {
        let sipp = "  Successful call        |        0                  |        5    \n";
        assert_eq!(
            sipp_through(true, sipp),
            (true, "Successful call | 0 | 5".to_string())
        );
        assert!(!sipp_through(true, &sipp.replace('5', "0")).0);
        let turn = "1: : start_mclient: msz=1, tot_send_msgs=0, tot_recv_msgs=0\n\
                    3: : start_mclient: tot_send_msgs=20, tot_recv_msgs=20\n\
                    3: : Total lost packets 0 (0.000000%)\n";
        assert_eq!(
            turn_through(true, turn),
            (true, "20 relayed out, 20 came back".to_string())
        );
        let lost =
            "7: : start_mclient: msz=1, tot_send_msgs=20, tot_recv_msgs=0, tot_send_bytes ~ 2000\n";
        assert_eq!(
            turn_through(true, lost),
            (false, "20 relayed out, 0 came back".to_string())
        );
        assert!(stun_through(true, "0: : IPv4. UDP reflexive addr: 198.18.1.2:5000\n").0);
        assert!(!stun_through(true, "").0);
        assert!(curl_through(true, "200").0);
        assert!(!curl_through(false, "000").0);
    }
}
