//! `run --edition`: the daemon enforces the embedded catalog of the edition
//! it is given. An Access Edge address (`--role access-edge-external`)
//! takes XMPP (TCP 5269) under the 2015 catalog and drops it under 2019's,
//! which Microsoft removed XMPP from; SIP federation (TCP 5061) connects
//! under both.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use testkit::{
    netns::in_netns,
    ops::{Pair, TempDir, ok, ok_any},
};

const XMPP: u16 = 5269;
const SIP: u16 = 5061;

/// Whether a TCP connection from the client to the server's `port` opens.
fn connects(pair: &Pair, port: u16) -> bool {
    let to = SocketAddr::from((pair.server_ip, port));
    ok_any(
        "setns into the client namespace",
        in_netns(&pair.client, || {
            TcpStream::connect_timeout(&to, Duration::from_millis(800)).is_ok()
        }),
    )
}

#[test]
fn the_2019_edition_drops_xmpp_and_keeps_sip() {
    if !testkit::require_privileges("run --edition") {
        return;
    }
    let dir = TempDir::new("editions");
    let pair = Pair::new("pged", 94);
    // Listeners in the server namespace: a connection that passes XDP opens.
    let _listeners: Vec<TcpListener> = [XMPP, SIP]
        .into_iter()
        .map(|port| {
            let ip = pair.server_ip;
            ok(
                "listening in the server namespace",
                ok_any(
                    "setns into the server namespace",
                    in_netns(&pair.server, move || TcpListener::bind((ip, port))),
                ),
            )
        })
        .collect();

    let d2015 = pair.start(
        dir.path(),
        "daemon-2015",
        &["--role", "access-edge-external"],
    );
    assert!(
        connects(&pair, XMPP),
        "2015 (the default): XMPP TCP {XMPP} to the Access Edge connects"
    );
    assert!(connects(&pair, SIP), "2015: SIP TCP {SIP} connects");
    drop(d2015);

    let _d2019 = pair.start(
        dir.path(),
        "daemon-2019",
        &["--role", "access-edge-external", "--edition", "2019"],
    );
    assert!(
        !connects(&pair, XMPP),
        "2019: XMPP TCP {XMPP} is dropped (the 2019 catalog has no XMPP row)"
    );
    assert!(connects(&pair, SIP), "2019: SIP TCP {SIP} still connects");
    let drops = pair
        .scrape()
        .sum("portguard_drops_total", &[("reason", "port_not_allowed")]);
    assert!(
        drops >= 1.0,
        "the XMPP SYNs count as port_not_allowed drops: {drops}"
    );
}
