//! Address sets on a real interface: `portguard run --role
//! access-edge-external --addresses federation-partners=...` attached in
//! native XDP mode to the server end of a veth pair, real TCP connections
//! from a partner address and a stranger address of the client, IPv4 and
//! IPv6. The partner reaches XMPP federation (5269, a row that names the
//! set) and the stranger does not, and is counted as `peer_not_allowed`.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use testkit::{
    netns::{addr, in_netns},
    ops::{Pair, TempDir, ok, ok_any, poll},
    sockets::Counter,
};

const WAIT: Duration = Duration::from_secs(5);
const SUBNET: u8 = 91;
/// XMPP federation: a row of the Access Edge that names `federation-partners`,
/// and no port of the pair's own roles (front-end, client).
const XMPP: u16 = 5269;

/// One TCP connection from the client namespace to `to` (its source
/// chosen by [`route_via`]), carrying a line; whether the handshake
/// completed within 1 s.
fn connects(pair: &Pair, to: SocketAddr) -> bool {
    ok_any(
        "setns into the client namespace",
        in_netns(&pair.client, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
                .and_then(|mut s| s.write_all(b"<stream:stream to='portguard'>"))
                .is_ok()
        }),
    )
}

/// Makes the client namespace use `src` for packets to `dst`.
fn route_via(pair: &Pair, dst: IpAddr, src: IpAddr) {
    let (family, len) = if dst.is_ipv4() {
        ("-4", 32)
    } else {
        ("-6", 128)
    };
    ok_any(
        "client route",
        pair.client.ip(&[
            family,
            "route",
            "replace",
            &format!("{dst}/{len}"),
            "dev",
            &pair.client_if,
            "src",
            &src.to_string(),
        ]),
    );
}

#[test]
fn a_partner_reaches_xmpp_federation_and_a_stranger_does_not() {
    if !testkit::require_privileges("netns_address_sets") {
        return;
    }
    let dir = TempDir::new("np-sets");
    let pair = Pair::new("npsets", SUBNET);
    let partner4: IpAddr = ok("v4", format!("198.18.{SUBNET}.1").parse());
    let stranger4: IpAddr = ok("v4", format!("198.18.{SUBNET}.9").parse());
    let partner6: IpAddr = ok("v6", format!("2001:db8:{SUBNET}::1").parse());
    let stranger6: IpAddr = ok("v6", format!("2001:db8:{SUBNET}::9").parse());
    let server4 = IpAddr::V4(pair.server_ip);
    let server6: IpAddr = ok("v6", format!("2001:db8:{SUBNET}::2").parse());
    for (ns, ifname, a) in [
        (&pair.client, &pair.client_if, format!("{stranger4}/24")),
        (&pair.client, &pair.client_if, format!("{partner6}/64")),
        (&pair.client, &pair.client_if, format!("{stranger6}/64")),
        (&pair.server, &pair.server_if, format!("{server6}/64")),
    ] {
        ok_any("address", addr(ns, ifname, &a));
    }
    let partners = format!("federation-partners={partner4}/32,{partner6}/128");
    let _d = pair.start(
        dir.path(),
        "portguard",
        &["--role", "access-edge-external", "--addresses", &partners],
    );
    let listeners: Vec<Counter> = {
        let addrs = [
            SocketAddr::new(server4, XMPP),
            SocketAddr::new(server6, XMPP),
        ];
        let r = ok_any(
            "setns into the server namespace",
            in_netns(&pair.server, move || -> std::io::Result<Vec<Counter>> {
                addrs.iter().map(|a| Counter::tcp(*a)).collect()
            }),
        );
        ok("binding listeners", r)
    };
    // IPv6 addresses need DAD to finish before they can be a source.
    let _ = poll(WAIT, || {
        let text = ok_any(
            "addresses",
            pair.client.ip(&["-6", "addr", "show", "tentative"]),
        );
        (!text.contains("tentative")).then_some(())
    });
    let base = pair
        .scrape()
        .sum("portguard_drops_total", &[("reason", "peer_not_allowed")]);
    for (family, server, partner, stranger, listener) in [
        ("IPv4", server4, partner4, stranger4, &listeners[0]),
        ("IPv6", server6, partner6, stranger6, &listeners[1]),
    ] {
        let to = SocketAddr::new(server, XMPP);
        route_via(&pair, server, partner);
        assert!(
            connects(&pair, to),
            "{family}: the partner {partner} must reach XMPP {to}"
        );
        let _ = poll(WAIT, || (listener.counts().count == 1).then_some(()));
        assert_eq!(
            listener.counts().count,
            1,
            "{family}: the partner's connection must carry its line to {to}"
        );
        route_via(&pair, server, stranger);
        assert!(
            !connects(&pair, to),
            "{family}: the stranger {stranger} must not reach XMPP {to}"
        );
        assert_eq!(
            listener.counts().count,
            1,
            "{family}: nothing from the stranger may arrive at {to}"
        );
    }
    let refused = poll(WAIT, || {
        let n = pair
            .scrape()
            .sum("portguard_drops_total", &[("reason", "peer_not_allowed")])
            - base;
        (n >= 2.0).then_some(n)
    });
    assert!(
        refused.is_some(),
        "the strangers' SYNs were not counted as peer_not_allowed:\n{}",
        pair.scrape().text
    );
}
