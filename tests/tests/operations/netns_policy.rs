//! The packet policy on a real interface: `portguard run` attached in native
//! XDP mode to the server end of a veth pair, real sockets on both sides.
//!
//! - VLAN: tagged frames (802.1Q, QinQ, three tags) sent raw with AF_PACKET
//!   from the client; this kernel has no 802.1Q module, so nothing tagged
//!   reaches a socket and the proof is portguard's own counters;
//! - IPv6: UDP and TCP over 2001:db8::/64, allowed ones delivered, forbidden
//!   ones not;
//! - fragments: MTU 1280 on both ends, a 4,000-byte UDP datagram (IPv4 and
//!   IPv6) to an allowed port is reassembled by the receiving socket, one to
//!   a forbidden port never arrives;
//! - replies: the server opens TCP and UDP to the client on ports the catalog
//!   does not allow inbound; the replies arrive, an unsolicited packet to the
//!   same local port does not;
//! - per-destination profiles: two addresses with different roles and one
//!   outside every profile, no --role.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use portguard_testsupport::frames::{ETH_P_8021AD, ETH_P_8021Q, Packet};
use testkit::ops::{self, Daemon, Pair, TempDir, ok, ok_any, poll};
use testkit::{
    netns::{addr, in_netns, ns_exec, run},
    sockets::{Counter, Counts},
};

const WAIT: Duration = Duration::from_secs(5);

fn privileged(test: &str) -> bool {
    testkit::require_privileges(test)
}

/// A metric sum from portguard's /metrics in the server namespace.
fn metric(pair: &Pair, name: &str, labels: &[(&str, &str)]) -> f64 {
    pair.scrape().sum(name, labels)
}

const RULE_PASS_UDP: [(&str, &str); 3] = [("verdict", "pass"), ("role", "!-"), ("proto", "udp")];
const RULE_PASS_TCP: [(&str, &str); 3] = [("verdict", "pass"), ("role", "!-"), ("proto", "tcp")];

/// Waits until `name{labels}` has moved by exactly `by` from `base`.
fn wait_moved(pair: &Pair, what: &str, name: &str, labels: &[(&str, &str)], base: f64, by: f64) {
    let moved = poll(WAIT, || {
        let now = metric(pair, name, labels);
        (now - base == by).then_some(())
    });
    if moved.is_none() {
        let now = metric(pair, name, labels);
        panic!(
            "{what}: {name}{labels:?} moved by {} (expected {by})\n{}",
            now - base,
            pair.scrape().text
        );
    }
}

#[test]
fn vlan_tagged_frames_are_classified_by_their_inner_packet() {
    if !privileged("netns_policy: VLAN") {
        return;
    }
    let dir = TempDir::new("np-vlan");
    let pair = Pair::new("npvlan", 61);
    let _d = pair.start(dir.path(), "portguard", &[]);
    let (client_mac, server_mac) = (
        testkit::netns::mac_of(&pair.client, &pair.client_if).unwrap_or_else(|e| panic!("{e:#}")),
        testkit::netns::mac_of(&pair.server, &pair.server_if).unwrap_or_else(|e| panic!("{e:#}")),
    );
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    let frame = |p: Packet| {
        let mut p = p;
        p.src_mac = client_mac;
        p.dst_mac = server_mac;
        p.build()
    };
    let allowed_udp = frame(
        Packet::udp(&c, &s, 40_000, 3478)
            .payload(20)
            .vlan(ETH_P_8021Q, 10),
    );
    let allowed_tcp = frame(
        Packet::tcp(&c, &s, 40_000, 5061)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 20),
    );
    let forbidden = frame(Packet::tcp(&c, &s, 40_000, 3389).vlan(ETH_P_8021Q, 10));
    let too_deep = frame(
        Packet::udp(&c, &s, 40_000, 3478)
            .vlan(ETH_P_8021AD, 1)
            .vlan(ETH_P_8021Q, 2)
            .vlan(ETH_P_8021Q, 3),
    );

    let base_udp = metric(&pair, "portguard_packets_total", &RULE_PASS_UDP);
    let base_tcp = metric(&pair, "portguard_packets_total", &RULE_PASS_TCP);
    let base_not_allowed = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "port_not_allowed")],
    );
    let base_depth = metric(&pair, "portguard_drops_total", &[("reason", "vlan_depth")]);
    let injector = testkit::sockets::RawSender::new(&pair.client, &pair.client_if)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for _ in 0..5 {
        injector.send(&allowed_udp).expect("sending a raw frame");
        injector.send(&allowed_tcp).expect("sending a raw frame");
        injector.send(&forbidden).expect("sending a raw frame");
        injector.send(&too_deep).expect("sending a raw frame");
    }
    wait_moved(
        &pair,
        "802.1Q UDP 3478",
        "portguard_packets_total",
        &RULE_PASS_UDP,
        base_udp,
        5.0,
    );
    wait_moved(
        &pair,
        "QinQ TCP 5061",
        "portguard_packets_total",
        &RULE_PASS_TCP,
        base_tcp,
        5.0,
    );
    wait_moved(
        &pair,
        "802.1Q TCP 3389",
        "portguard_drops_total",
        &[("reason", "port_not_allowed")],
        base_not_allowed,
        5.0,
    );
    wait_moved(
        &pair,
        "three tags",
        "portguard_drops_total",
        &[("reason", "vlan_depth")],
        base_depth,
        5.0,
    );
}

/// Adds 2001:db8:N::1 and ::2 to the pair.
fn add_ipv6(pair: &Pair, subnet: u8) -> (IpAddr, IpAddr) {
    let (c6, s6) = (
        format!("2001:db8:{subnet}::1"),
        format!("2001:db8:{subnet}::2"),
    );
    ok_any(
        "client IPv6",
        addr(&pair.client, &pair.client_if, &format!("{c6}/64")),
    );
    ok_any(
        "server IPv6",
        addr(&pair.server, &pair.server_if, &format!("{s6}/64")),
    );
    (ok("v6", c6.parse()), ok("v6", s6.parse()))
}

fn listen(pair: &Pair, udp: &[SocketAddr], tcp: &[SocketAddr]) -> (Vec<Counter>, Vec<Counter>) {
    let (udp, tcp) = (udp.to_vec(), tcp.to_vec());
    let r = ok_any(
        "setns into the server namespace",
        in_netns(&pair.server, move || -> std::io::Result<_> {
            let u = udp
                .iter()
                .map(|a| Counter::udp(*a))
                .collect::<Result<Vec<_>, _>>()?;
            let t = tcp
                .iter()
                .map(|a| Counter::tcp(*a))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((u, t))
        }),
    );
    ok("binding listeners", r)
}

/// From the client: `n` UDP datagrams of `size` bytes to each address, and
/// one TCP connection carrying a line to each TCP address (1 s to connect).
/// Returns which TCP connections succeeded.
fn send_from_client(
    pair: &Pair,
    from: IpAddr,
    udp: &[SocketAddr],
    size: usize,
    n: u32,
    tcp: &[SocketAddr],
) -> Vec<bool> {
    let (udp, tcp) = (udp.to_vec(), tcp.to_vec());
    ok_any(
        "setns into the client namespace",
        in_netns(&pair.client, move || {
            let sock = ok("binding in the client", UdpSocket::bind((from, 0)));
            let payload = vec![0x5au8; size];
            for to in &udp {
                for _ in 0..n {
                    ok("send", sock.send_to(&payload, to));
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            tcp.iter()
                .map(
                    |to| match TcpStream::connect_timeout(to, Duration::from_secs(1)) {
                        Ok(mut s) => s.write_all(b"REGISTER sip:portguard SIP/2.0\r\n").is_ok(),
                        Err(_) => false,
                    },
                )
                .collect()
        }),
    )
}

fn wait_counts(c: &Counter, want: Counts) -> Counts {
    let _ = poll(WAIT, || (c.counts() == want).then_some(()));
    // A moment more, so that a surplus would be seen too.
    std::thread::sleep(Duration::from_millis(100));
    c.counts()
}

#[test]
fn ipv6_udp_and_tcp_allowed_delivered_forbidden_not() {
    if !privileged("netns_policy: IPv6") {
        return;
    }
    let dir = TempDir::new("np-v6");
    let pair = Pair::new("npv6", 62);
    let (c6, s6) = add_ipv6(&pair, 62);
    let _d = pair.start(dir.path(), "portguard", &[]);
    let (udp_ok, udp_no) = (SocketAddr::new(s6, 3478), SocketAddr::new(s6, 161));
    let (tcp_ok, tcp_no) = (SocketAddr::new(s6, 5061), SocketAddr::new(s6, 3389));
    let (u, t) = listen(&pair, &[udp_ok, udp_no], &[tcp_ok, tcp_no]);
    let connected = send_from_client(&pair, c6, &[udp_ok, udp_no], 100, 10, &[tcp_ok, tcp_no]);
    assert_eq!(
        connected,
        [true, false],
        "TCP over IPv6: 5061 must connect, 3389 must not"
    );
    assert_eq!(
        wait_counts(
            &u[0],
            Counts {
                count: 10,
                bytes: 1000
            }
        ),
        Counts {
            count: 10,
            bytes: 1000
        },
        "UDP 3478 over IPv6"
    );
    assert_eq!(
        wait_counts(
            &t[0],
            Counts {
                count: 1,
                bytes: 32
            }
        )
        .count,
        1,
        "TCP 5061 over IPv6"
    );
    assert_eq!(
        u[1].counts(),
        Counts::default(),
        "UDP 161 over IPv6 must not arrive"
    );
    assert_eq!(
        t[1].counts(),
        Counts::default(),
        "TCP 3389 over IPv6 must not arrive"
    );
    let scrape = pair.scrape();
    assert!(
        scrape.sum(
            "portguard_packets_total",
            &[("service", "neighbor_discovery"), ("verdict", "pass")]
        ) > 0.0,
        "IPv6 neighbour discovery was not counted as passing:\n{}",
        scrape.text
    );
}

#[test]
fn fragmented_datagrams_follow_their_first_fragment() {
    if !privileged("netns_policy: fragments") {
        return;
    }
    let dir = TempDir::new("np-frag");
    let pair = Pair::new("npfrag", 63);
    let (c6, s6) = add_ipv6(&pair, 63);
    for (ns, ifname) in [
        (&pair.client, &pair.client_if),
        (&pair.server, &pair.server_if),
    ] {
        ok_any(
            "MTU 1280",
            ns.ip(&["link", "set", "dev", ifname, "mtu", "1280"]),
        );
    }
    let _d = pair.start(dir.path(), "portguard", &[]);
    let c4 = IpAddr::V4(pair.client_ip);
    let s4 = IpAddr::V4(pair.server_ip);
    let targets = [
        SocketAddr::new(s4, 50_000),
        SocketAddr::new(s4, 161),
        SocketAddr::new(s6, 50_001),
        SocketAddr::new(s6, 161),
    ];
    let (u, _) = listen(&pair, &targets, &[]);
    let base_orphans = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "fragment_orphan")],
    );
    let base_frag_drop = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "port_not_allowed")],
    );
    send_from_client(&pair, c4, &targets[..2], 4000, 3, &[]);
    send_from_client(&pair, c6, &targets[2..], 4000, 3, &[]);
    let whole = Counts {
        count: 3,
        bytes: 12_000,
    };
    assert_eq!(
        wait_counts(&u[0], whole),
        whole,
        "4,000-byte UDP datagrams to 50000 over IPv4 (MTU 1280)"
    );
    assert_eq!(
        wait_counts(&u[2], whole),
        whole,
        "4,000-byte UDP datagrams to 50001 over IPv6 (MTU 1280)"
    );
    assert_eq!(
        u[1].counts(),
        Counts::default(),
        "fragmented UDP to 161 must never arrive"
    );
    assert_eq!(
        u[3].counts(),
        Counts::default(),
        "fragmented UDP to 161 over IPv6 must never arrive"
    );
    // The forbidden datagrams' first fragments were dropped as
    // `port_not_allowed` and took no entry, so their later fragments
    // (4,000 bytes at MTU 1280: 3 more each) were dropped as orphans; the
    // allowed datagrams' fragments were never orphans.
    let dropped = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "port_not_allowed")],
    ) - base_frag_drop;
    assert!(
        dropped >= 2.0 * 3.0,
        "only {dropped} first fragments of the forbidden datagrams were dropped"
    );
    let orphans = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "fragment_orphan")],
    ) - base_orphans;
    assert_eq!(
        orphans,
        2.0 * 3.0 * 3.0,
        "later fragments of the forbidden datagrams, dropped as orphans (and none of the allowed ones)"
    );
}

#[test]
fn replies_to_connections_the_host_opened_pass_unsolicited_packets_do_not() {
    if !privileged("netns_policy: replies") {
        return;
    }
    let dir = TempDir::new("np-reply");
    let pair = Pair::new("npreply", 64);
    // The server's own connections use local ports 40000-40100, which the
    // lab policy does not open inbound.
    ok_any(
        "ephemeral port range",
        run(&mut ns_exec(
            &pair.server,
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=40000 40100"],
        )),
    );
    let _d = pair.start(dir.path(), "portguard", &[]);
    let client = SocketAddr::new(IpAddr::V4(pair.client_ip), 7070);
    let client_udp = SocketAddr::new(IpAddr::V4(pair.client_ip), 7071);

    // The client side: a TCP service that greets, a UDP echo.
    let tcp_service = ok(
        "client TCP listener",
        ok_any(
            "setns",
            in_netns(&pair.client, move || TcpListener::bind(client)),
        ),
    );
    let udp_echo = ok(
        "client UDP echo",
        ok_any(
            "setns",
            in_netns(&pair.client, move || UdpSocket::bind(client_udp)),
        ),
    );
    let greeter = std::thread::spawn(move || {
        if let Ok((mut s, _)) = tcp_service.accept() {
            let _ = s.write_all(b"220 hello from the client side\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
        }
    });
    ok(
        "echo timeout",
        udp_echo.set_read_timeout(Some(Duration::from_secs(5))),
    );
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        if let Ok((n, from)) = udp_echo.recv_from(&mut buf) {
            let _ = udp_echo.send_to(&buf[..n], from);
        }
    });

    // The server dials out.
    let server_ip = pair.server_ip;
    let (greeting, tcp_local, udp_reply, udp_local, tcp_stream) = ok_any(
        "setns into the server namespace",
        in_netns(&pair.server, move || {
            let mut s = ok(
                "server connects out",
                TcpStream::connect_timeout(&client, Duration::from_secs(3)),
            );
            ok(
                "read timeout",
                s.set_read_timeout(Some(Duration::from_secs(3))),
            );
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            let tcp_local = ok("local addr", s.local_addr());
            let u = ok("server UDP", UdpSocket::bind((server_ip, 0)));
            ok(
                "udp timeout",
                u.set_read_timeout(Some(Duration::from_secs(3))),
            );
            ok("send DNS-like query", u.send_to(b"query", client_udp));
            let mut rb = [0u8; 64];
            let got = u.recv_from(&mut rb).map(|(n, _)| rb[..n].to_vec()).ok();
            let udp_local = ok("local addr", u.local_addr());
            (
                String::from_utf8_lossy(&buf[..n]).into_owned(),
                tcp_local,
                got,
                (udp_local, u),
                s,
            )
        }),
    );
    assert!(
        greeting.starts_with("220 hello"),
        "the TCP reply did not arrive (got {greeting:?})"
    );
    assert_eq!(
        udp_reply.as_deref(),
        Some(&b"query"[..]),
        "the UDP reply did not arrive"
    );
    assert!(
        (40_000..=40_100).contains(&tcp_local.port()),
        "local port {tcp_local} outside the set range"
    );
    let _ = greeter.join();
    let _ = echo.join();

    // Unsolicited: a new UDP source to the same local port, a SYN to the
    // TCP connection's local port.
    let (udp_local_addr, udp_sock) = udp_local;
    let base = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "port_not_allowed")],
    );
    let from = pair.client_ip;
    let syn_result = ok_any(
        "setns into the client namespace",
        in_netns(&pair.client, move || {
            let other = ok("client UDP", UdpSocket::bind((from, 7099)));
            ok(
                "unsolicited send",
                other.send_to(b"unsolicited", udp_local_addr),
            );
            TcpStream::connect_timeout(&tcp_local, Duration::from_secs(1)).map(|_| ())
        }),
    );
    ok(
        "udp timeout",
        udp_sock.set_read_timeout(Some(Duration::from_millis(500))),
    );
    let mut buf = [0u8; 64];
    assert!(
        udp_sock.recv_from(&mut buf).is_err(),
        "an unsolicited UDP datagram reached the server's flow port"
    );
    match syn_result {
        Err(e)
            if e.kind() == std::io::ErrorKind::TimedOut
                || e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => {
            panic!("an unsolicited SYN to {tcp_local} must be dropped (a timeout), got {other:?}")
        }
    }
    let dropped = metric(
        &pair,
        "portguard_drops_total",
        &[("reason", "port_not_allowed")],
    ) - base;
    assert!(
        dropped >= 2.0,
        "the unsolicited UDP and SYN were not counted as dropped ({dropped})"
    );
    let established = pair.scrape().sum(
        "portguard_packets_total",
        &[("service", "established"), ("verdict", "pass")],
    );
    assert!(
        established >= 2.0,
        "replies were not counted as established ({established})"
    );
    drop(tcp_stream);
}

#[test]
fn per_destination_profiles_without_a_default_role() {
    if !privileged("netns_policy: profiles") {
        return;
    }
    let dir = TempDir::new("np-prof");
    let pair = Pair::new("npprof", 65);
    let fe = Ipv4Addr::new(198, 18, 65, 2);
    let lb = Ipv4Addr::new(198, 18, 65, 3);
    let none = Ipv4Addr::new(198, 18, 65, 4);
    for a in [lb, none] {
        ok_any(
            "server address",
            addr(&pair.server, &pair.server_if, &format!("{a}/24")),
        );
    }
    // Ports and flows are watched here; the datagrams carry text, which the
    // media rules' payload check (tests/tests/policy/media.rs) would refuse.
    let args: Vec<String> = [
        "run",
        "--media-check",
        "off",
        "--iface",
        &pair.server_if,
        "--profile",
        &format!("{fe}/32=front-end"),
        "--profile",
        &format!("{lb}/32=lb-director"),
        "--xdp-mode",
        "native",
        "--metrics-addr",
        ops::METRICS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = Daemon::spawn(&pair.server, &args, dir.path(), "portguard");
    d.wait_ready(&pair);

    let t = |ip: Ipv4Addr, port: u16| SocketAddr::new(IpAddr::V4(ip), port);
    // (address, expected to connect)
    let tcp_cases = [
        (t(fe, 5061), true),
        (t(lb, 5061), true),
        (t(lb, 4443), true),
        (t(fe, 5067), false),
        (t(lb, 5067), false),
        (t(none, 5061), false),
    ];
    let udp_cases = [
        (t(fe, 50_000), true),
        (t(lb, 50_000), false),
        (t(none, 50_000), false),
    ];
    let tcp_addrs: Vec<SocketAddr> = tcp_cases.iter().map(|(a, _)| *a).collect();
    let udp_addrs: Vec<SocketAddr> = udp_cases.iter().map(|(a, _)| *a).collect();
    let (u, tl) = listen(&pair, &udp_addrs, &tcp_addrs);
    let base_no_profile = metric(&pair, "portguard_drops_total", &[("reason", "no_profile")]);
    let connected = send_from_client(
        &pair,
        IpAddr::V4(pair.client_ip),
        &udp_addrs,
        50,
        4,
        &tcp_addrs,
    );
    for ((addr, want), got) in tcp_cases.iter().zip(&connected) {
        assert_eq!(got, want, "TCP to {addr}: connected {got}, expected {want}");
    }
    for ((addr, want), c) in udp_cases.iter().zip(&u) {
        let expect = if *want {
            Counts {
                count: 4,
                bytes: 200,
            }
        } else {
            Counts::default()
        };
        assert_eq!(wait_counts(c, expect), expect, "UDP to {addr}");
    }
    for ((addr, want), c) in tcp_cases.iter().zip(&tl) {
        let n = if *want { 1 } else { 0 };
        let _ = poll(WAIT, || (c.counts().count == n).then_some(()));
        assert_eq!(
            c.counts().count,
            n,
            "TCP connections carrying data to {addr}"
        );
    }
    let no_profile =
        metric(&pair, "portguard_drops_total", &[("reason", "no_profile")]) - base_no_profile;
    // 4 UDP datagrams and at least one SYN to the address outside every profile.
    assert!(
        no_profile >= 5.0,
        "packets to {none} were not counted as no_profile ({no_profile})"
    );
}
