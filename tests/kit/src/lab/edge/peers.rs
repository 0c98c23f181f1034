//! The edge lab's real protocol peers: sipp, coturn (a STUN binding and a
//! TURN relay through the A/V Edge) and curl, each allowed conversation and
//! a forbidden variant, against servers that listen.

use std::{path::Path, time::Duration};

use anyhow::Result;

use super::{FAMILIES, Family, Host, Topology};
use crate::lab::peers::{
    self, Client, PeerResult, PeerRun, Server, https_server, sipp_server, turn_through,
};

/// turnutils_peer's port for a relay the rules allow (in 50000-59999) and
/// for one they do not (coturn's default peer port).
const TURN_PEER_ALLOWED: u16 = 50_500;
const TURN_PEER_FORBIDDEN: u16 = 3480;
const TURN_USER: &str = "lab";
const TURN_REALM: &str = "portguard.lab";

/// sipp binds a media port (6000 unless told) even when no media flows:
/// the two sipp processes on one address (5061 and 5062, side by side)
/// need their own, as they need their own SIP port.
fn sipp_media_port(sip_port: u16) -> String {
    (6000 + (sip_port - 5061) * 100).to_string()
}

/// The servers (in the DMZ and on the internet) and the clients, each client
/// against a server that listens, so a forbidden one fails because of
/// portguard alone. The clients run side by side.
pub(super) fn run_peers(topo: &Topology, firewall: bool) -> Result<Vec<PeerResult>> {
    peers::in_scratch(&topo.dmz, |dir| {
        let _servers = servers(topo, dir)?;
        // The servers bind after they start: the clients go once every
        // socket they aim at is there.
        peers::wait_listening(&topo.dmz, &dmz_sockets(), Duration::from_secs(15))?;
        peers::wait_listening(&topo.internet, &internet_sockets(), Duration::from_secs(15))?;
        let runs = FAMILIES.into_iter().flat_map(peer_runs).collect();
        peers::run_side_by_side(&topo.internet, runs, firewall)
    })
}

/// `ADDRESS:PORT` as `ss` prints it (IPv6 in brackets).
fn socket(host: Host, family: Family, port: u16) -> String {
    match family {
        Family::V4 => format!("{}:{port}", host.ip(family)),
        Family::V6 => format!("[{}]:{port}", host.ip(family)),
    }
}

/// What [`servers`] binds in the DMZ: sipp's SIP ports, coturn's 3478 on
/// each address it listens on, and openssl's wildcard 443 and 4443.
fn dmz_sockets() -> Vec<String> {
    let mut out = vec!["*:443".to_string(), "*:4443".to_string()];
    for family in FAMILIES {
        for port in [5061, 5062] {
            out.push(socket(Host::AccessEdge, family, port));
        }
        for host in [Host::AvEdge, Host::WebConf] {
            out.push(socket(host, family, 3478));
        }
    }
    out
}

/// What [`servers`] binds on the internet side: the TURN peers.
fn internet_sockets() -> Vec<String> {
    FAMILIES
        .into_iter()
        .flat_map(|f| {
            [TURN_PEER_ALLOWED, TURN_PEER_FORBIDDEN].map(|p| socket(Host::Internet, f, p))
        })
        .collect()
}

/// sipp on the Access Edge's 5061 and 5062, openssl on 443 and 4443 of
/// every DMZ address, coturn on the A/V and Web Conferencing Edges
/// (relaying from the A/V Edge), and turnutils_peer on the internet side.
fn servers(topo: &Topology, dir: &Path) -> Result<Vec<Server>> {
    let mut servers: Vec<Server> = Vec::new();
    for family in FAMILIES {
        let access = Host::AccessEdge.ip(family).to_string();
        for port in [5061, 5062] {
            let media = sipp_media_port(port);
            servers.push(sipp_server(
                &topo.dmz,
                &access,
                &port.to_string(),
                &["-mp", &media],
            )?);
        }
    }
    let cert = peers::test_certificate(dir)?;
    // One wildcard listener per port serves every DMZ address, both families.
    for port in ["443", "4443"] {
        servers.push(https_server(&topo.dmz, port, &cert)?);
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
        "--no-rfc5780",
        "--pidfile",
        &pidfile,
        "--allowed-peer-ip",
        "198.18.0.0-198.19.255.255",
        "--allowed-peer-ip",
        "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    let listening: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| [Host::AvEdge, Host::WebConf].map(|h| h.ip(*f).to_string()))
        .collect();
    let relays: Vec<String> = FAMILIES
        .iter()
        .map(|f| Host::AvEdge.ip(*f).to_string())
        .collect();
    for a in &listening {
        turn.extend(["-L", a]);
    }
    for r in &relays {
        turn.extend(["-E", r]);
    }
    servers.push(peers::turnserver(&topo.dmz, &turn)?);
    let locals: Vec<String> = FAMILIES
        .iter()
        .map(|f| Host::Internet.ip(*f).to_string())
        .collect();
    for port in [TURN_PEER_ALLOWED, TURN_PEER_FORBIDDEN] {
        let port = port.to_string();
        let mut args = vec!["-p", &port];
        for l in &locals {
            args.extend(["-L", l]);
        }
        servers.push(peers::start(&topo.internet, "turnutils_peer", &args)?);
    }
    Ok(servers)
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
        client: Client::sipp_calls(
            &format!("{}:{port}", url_host(Host::AccessEdge)),
            &host(Host::Internet),
            &[
                "-p".into(),
                (port + 10_000).to_string(),
                "-mp".into(),
                sipp_media_port(port),
            ],
            6,
        ),
    };
    let curl = |to: Host, port: u16, allowed| PeerRun {
        name: format!("curl, HTTPS GET ({f})"),
        target: format!("{} tcp {port}", to.name()),
        allowed,
        client: Client::https_get(
            &["--max-time", "4"],
            &format!("https://{}:{port}/", url_host(to)),
        )
        .within(6),
    };
    let stun_from = |from: Host, to: Host, allowed| PeerRun {
        name: match from {
            Host::Internet => format!("turnutils_stunclient, STUN binding ({f})"),
            _ => format!("turnutils_stunclient from {} ({f})", from.name()),
        },
        target: format!("{} udp 3478", to.name()),
        allowed,
        client: Client::stun_binding(Some(&host(from)), &host(to)),
    };
    let stun = |to: Host, allowed| stun_from(Host::Internet, to, allowed);
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
            client: Client {
                program: "turnutils_uclient",
                args,
                secs: 8,
                through: turn_through,
            },
        }
    };
    vec![
        sip(5061, true),
        curl(Host::AccessEdge, 443, true),
        curl(Host::ReverseProxy, 443, true),
        stun(Host::AvEdge, true),
        // Microsoft 365's relays reach the A/V Edge's STUN port (a hybrid
        // row, and av-edge-external's for anyone).
        stun_from(Host::Microsoft365, Host::AvEdge, true),
        relay(TURN_PEER_ALLOWED, true),
        sip(5062, false),
        curl(Host::ReverseProxy, 4443, false),
        stun(Host::WebConf, false),
        relay(TURN_PEER_FORBIDDEN, false),
    ]
}
