//! The nftables export and the XDP maps enforce the same policy: the same
//! packets, for every role, get the same verdict from `nft` (loaded in a
//! namespace, real frames injected over a veth) and from the XDP program
//! (`BPF_PROG_TEST_RUN`).
//!
//! How the nft verdict is observed: a probe table hooks `input` at a later
//! priority than portguard's chain, with one counting rule per probe packet
//! that matches its addresses and ports exactly (so the kernel's own answers
//! and errors never count). A packet the exported ruleset accepts goes on to
//! its probe rule; one it drops never does. Each role's packets are sent all
//! at once and the probe counters read with one `nft -j list` when they
//! settle, instead of a wait per packet.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portguard::{
    catalog::{Catalog, Protocol},
    loader::Classifier,
    policy::{self, PolicySpec, SlotRegistry},
};
use portguard_testsupport::{
    frames::{L4, Packet},
    kernel::XDP_PASS,
    spec::role_spec,
};
use testkit::netns::{NetNs, veth_pair};

/// How long the packets a ruleset accepts may take to reach the probe: veth
/// delivery is synchronous in practice, this is the safety margin.
const SETTLE: Duration = Duration::from_secs(2);
/// After the expected passes arrived: time for an unexpected one to show.
const GRACE: Duration = Duration::from_millis(50);

#[path = "nft_differential/appliance.rs"]
mod appliance;

/// The probe table: rule `i` counts packet `i` of `packets`, and nothing else.
fn probe_table(packets: &[(String, Packet)]) -> String {
    probe_table_then(packets.iter().map(|(_, p)| p).enumerate(), "")
}

/// A probe table over numbered packets; `then` follows each counter (` drop`
/// keeps the namespace's own stack from answering, so that no RST or ICMP
/// error of its own can touch the state being compared).
fn probe_table_then<'a>(packets: impl Iterator<Item = (usize, &'a Packet)>, then: &str) -> String {
    let mut t = String::from(
        "table inet probe {\n    chain input {\n        type filter hook input priority 100; policy accept;\n",
    );
    for (i, p) in packets {
        let fam = match p.src {
            IpAddr::V4(_) => "ip",
            IpAddr::V6(_) => "ip6",
        };
        let what = match (&p.l4, p.src) {
            (L4::Tcp { sport, dport, .. }, _) => format!("tcp sport {sport} tcp dport {dport}"),
            (L4::Udp { sport, dport }, _) => format!("udp sport {sport} udp dport {dport}"),
            (L4::Icmp { icmp_type, .. }, IpAddr::V4(_)) => format!("icmp type {icmp_type}"),
            (L4::Icmp { icmp_type, .. }, IpAddr::V6(_)) => format!("icmpv6 type {icmp_type}"),
            (L4::Raw { proto }, _) => panic!("no probe rule for raw protocol {proto}"),
        };
        let _ = writeln!(
            t,
            "        {fam} saddr {} {fam} daddr {} {what} counter{then} comment \"{i}\"",
            p.src, p.dst
        );
    }
    t.push_str("    }\n}\n");
    t
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_in(ns: &NetNs, ruleset: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(ruleset.as_bytes())
        .expect("writing the ruleset to nft");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft rejected the ruleset: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each probe rule's packet count, by rule (packet) index, from one
/// `nft -j list table inet probe`.
fn probe_counts(ns: &NetNs, n: usize) -> Vec<u64> {
    let (counts, text) = probe_count_map(ns);
    (0..n)
        .map(|i| {
            *counts
                .get(&i)
                .unwrap_or_else(|| panic!("no probe counter for packet {i} in:\n{text}"))
        })
        .collect()
}

/// The probe rules' packet counts by their index (comment), and the listing.
fn probe_count_map(ns: &NetNs) -> (std::collections::BTreeMap<usize, u64>, String) {
    let text = run(Command::new("ip").args([
        "netns",
        "exec",
        ns.name(),
        "nft",
        "-j",
        "list",
        "table",
        "inet",
        "probe",
    ]));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("nft -j output: {e}\n{text}"));
    let mut counts = std::collections::BTreeMap::new();
    let objects = json["nftables"].as_array().map_or(&[][..], Vec::as_slice);
    for rule in objects.iter().filter_map(|o| o.get("rule")) {
        let index = rule["comment"]
            .as_str()
            .and_then(|c| c.parse::<usize>().ok());
        let packets = rule["expr"]
            .as_array()
            .and_then(|e| e.iter().find_map(|x| x["counter"]["packets"].as_u64()));
        if let (Some(i), Some(packets)) = (index, packets) {
            counts.insert(i, packets);
        }
    }
    (counts, text)
}

/// Probe packets for one role: both edges of every destination rule, just
/// outside them, plus essentials and management.
fn packets_for(catalog: &Catalog, role: &str, seq: &mut u16) -> Vec<(String, Packet)> {
    let rules = catalog
        .effective_rules(&[role.to_string()])
        .unwrap_or_else(|e| panic!("role {role}: {e}"));
    let mut ports: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    for r in &rules {
        for p in [
            r.port_start,
            r.port_end,
            r.port_start.saturating_sub(1),
            r.port_end.saturating_add(1),
        ] {
            if p != 0 {
                ports.insert((r.protocol, p));
                ports.insert((
                    if r.protocol == Protocol::Tcp {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    },
                    p,
                ));
            }
        }
    }
    for p in [22, 161, 1433, 3389, 8443] {
        ports.insert((Protocol::Tcp, p));
        ports.insert((Protocol::Udp, p));
    }
    let mut out = Vec::new();
    for (i, (proto, port)) in ports.into_iter().enumerate() {
        *seq = seq.wrapping_add(1);
        let sport = 20_000 + (*seq % 20_000);
        let (src, dst) = if i % 3 == 0 {
            ("2001:db8::1", "2001:db8::2")
        } else {
            ("198.18.0.1", "198.18.0.2")
        };
        let pkt = match proto {
            Protocol::Tcp => Packet::tcp(src, dst, sport, port),
            // Media, so that the media rules' payload check passes it on
            // both sides: the ports are compared here.
            Protocol::Udp => Packet::udp(src, dst, sport, port).rtp(),
        };
        out.push((format!("{role} {proto:?} {port} ({src})"), pkt));
    }
    // ICMP errors and echo: both sides pass them.
    out.push((
        format!("{role} icmp echo"),
        Packet::icmp("198.18.0.1", "198.18.0.2", 8),
    ));
    out.push((
        format!("{role} icmpv6 echo"),
        Packet::icmp("2001:db8::1", "2001:db8::2", 128),
    ));
    out
}

#[test]
fn nft_export_and_xdp_agree_on_every_role() {
    if !testkit::require_privileges("nft_export_and_xdp_agree_on_every_role") {
        return;
    }
    let client = NetNs::new("pgnftc").expect("netns");
    let server = NetNs::new("pgnfts").expect("netns");
    veth_pair(&client, "nftc0", &server, "nfts0").expect("veth");
    for (ns, ifname, v4, v6) in [
        (&client, "nftc0", "198.18.0.1/24", "2001:db8::1/64"),
        (&server, "nfts0", "198.18.0.2/24", "2001:db8::2/64"),
        (&server, "nfts0", "198.18.0.17/24", "2001:db8::101/64"),
        (&server, "nfts0", "198.18.0.20/24", "2001:db8::120/64"),
    ] {
        run(Command::new("ip").args(["-n", ns.name(), "addr", "add", v4, "dev", ifname]));
        run(Command::new("ip").args(["-n", ns.name(), "addr", "add", v6, "dev", ifname, "nodad"]));
        run(Command::new("ip").args(["-n", ns.name(), "link", "set", ifname, "up"]));
    }
    // The server must accept frames from the injected sources without ND/ARP games.
    let server_mac = testkit::netns::mac_of(&server, "nfts0").unwrap_or_else(|e| panic!("{e:#}"));
    let client_mac = testkit::netns::mac_of(&client, "nftc0").unwrap_or_else(|e| panic!("{e:#}"));
    let injector =
        testkit::sockets::RawSender::new(&client, "nftc0").unwrap_or_else(|e| panic!("{e:#}"));

    let catalog = Catalog::embedded();
    // The perimeter roles are compared too. Their outbound-only ports (DNS,
    // CRL, the media relay range, the reverse proxy's 4443/8080) are probed
    // inbound like every rule's edges: both sides must drop them.
    for role in [
        "access-edge-external",
        "webconf-edge-external",
        "av-edge-external",
        "consolidated-edge-external",
        "edge-internal",
        "lb-edge-external",
        "lb-edge-internal",
        "reverse-proxy-external",
        "reverse-proxy-internal",
    ] {
        assert!(
            catalog.role_ids().contains(&role),
            "the differential must cover perimeter role {role}"
        );
    }
    let bin = testkit::portguard_bin();
    // One program for every role: each role's policy is installed with a
    // generation flip, as a reload would.
    let mut xdp = Classifier::load(None).expect("load");
    let mut registry = SlotRegistry::default();
    let mut seq = 0u16;
    let mut total = 0usize;
    let mut mismatches = Vec::new();
    // Every role alone, as the default profile; then a host with profiles.
    let mut cases: Vec<Case> = Vec::new();
    for role in catalog.role_ids() {
        cases.push((
            vec!["--role".into(), role.into()],
            role_spec(role),
            packets_for(&catalog, role, &mut seq),
        ));
    }
    cases.push(host_profiles_case(&catalog, &mut seq));
    cases.extend(address_set_cases(&catalog, &mut seq));
    for (generation, (export, spec, mut packets)) in (1..).zip(cases) {
        let ruleset = run(Command::new(&bin)
            .args(["catalog", "export", "--format", "nft"])
            .args(&export));
        let compiled = policy::resolve(&catalog, &spec)
            .and_then(|r| policy::compile(&r, &mut registry))
            .unwrap_or_else(|e| panic!("{export:?}: {e}"));
        xdp.install(&compiled, generation).expect("install");

        let mut frames = Vec::with_capacity(packets.len());
        let mut xdp_pass = Vec::with_capacity(packets.len());
        for (_, pkt) in &mut packets {
            pkt.src_mac = client_mac;
            pkt.dst_mac = server_mac;
            let frame = pkt.build();
            xdp_pass.push(xdp.test_run(&frame, 1).expect("test_run").return_value == XDP_PASS);
            frames.push(frame);
        }
        nft_in(
            &server,
            &format!("flush ruleset\n{ruleset}\n{}", probe_table(&packets)),
        );
        for frame in &frames {
            injector.send(frame).expect("sending a raw frame");
        }
        // Wait for the passes XDP expects, then a little longer so that a
        // pass XDP does not expect can show too.
        let expected = xdp_pass.iter().filter(|p| **p).count();
        let deadline = Instant::now() + SETTLE;
        let mut counts = probe_counts(&server, packets.len());
        while counts.iter().filter(|c| **c > 0).count() < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            counts = probe_counts(&server, packets.len());
        }
        std::thread::sleep(GRACE);
        counts = probe_counts(&server, packets.len());

        for (((name, _), xdp_pass), count) in packets.iter().zip(xdp_pass).zip(counts) {
            let nft_pass = count > 0;
            if nft_pass != xdp_pass {
                mismatches.push(format!(
                    "{name}: xdp {} nft {}",
                    verdict(xdp_pass),
                    verdict(nft_pass)
                ));
            }
            total += 1;
        }
    }
    nft_in(&server, "flush ruleset\n");
    assert!(
        total >= 200,
        "only {total} packets compared; the issue asks for at least 200"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {total} packets differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// One policy compared: the export's arguments, the same policy for the XDP
/// program, and the probe packets.
type Case = (Vec<String>, PolicySpec, Vec<(String, Packet)>);

/// A host with per-destination profiles (`--role front-end` the default): a
/// /28 and a /32 inside it, a /120 and a /128 inside it. Each address is
/// probed with the ports of its own profile and of the containing one, so
/// that a shorter prefix applied too, or the default, would show.
fn host_profiles_case(catalog: &Catalog, seq: &mut u16) -> Case {
    let profiles = [
        "198.18.0.16/28=edge-internal",
        "198.18.0.20/32=access-edge-external",
        "2001:db8::100/120=edge-internal",
        "2001:db8::120/128=access-edge-external",
    ];
    let mut export = vec!["--role".to_string(), "front-end".into()];
    for p in profiles {
        export.extend(["--profile".into(), p.into()]);
    }
    let spec = PolicySpec {
        profiles: profiles
            .iter()
            .map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}")))
            .collect(),
        ..role_spec("front-end")
    };
    let mut packets = Vec::new();
    for (v4, v6, roles) in [
        (
            "198.18.0.2",
            "2001:db8::2",
            &["front-end", "edge-internal"][..],
        ),
        (
            "198.18.0.17",
            "2001:db8::101",
            &["edge-internal", "front-end"][..],
        ),
        (
            "198.18.0.20",
            "2001:db8::120",
            &["access-edge-external", "edge-internal", "front-end"][..],
        ),
    ] {
        for role in roles {
            for (name, mut p) in packets_for(catalog, role, seq) {
                p.dst = if p.dst.is_ipv4() {
                    portguard_testsupport::frames::ip(v4)
                } else {
                    portguard_testsupport::frames::ip(v6)
                };
                packets.push((format!("profiles: {name} to {}", p.dst), p));
            }
        }
    }
    (export, spec, packets)
}

/// Rules with address sets: the roles whose rows name sets, with the sets
/// filled by `--addresses` so that some probe sources are in them and some
/// are not (the client's own address, and another on its link), IPv4 and
/// IPv6, an empty set among them.
fn address_set_cases(catalog: &Catalog, seq: &mut u16) -> Vec<Case> {
    let mut cases = Vec::new();
    for (role, sets) in [
        (
            "edge-internal",
            &[
                "front-end-pool=198.18.0.1/32,2001:db8::1/128",
                "director-pool=",
                "survivable-branch=198.18.0.9/32",
            ][..],
        ),
        (
            "access-edge-external",
            &["federation-partners=198.18.0.9/32,2001:db8::/120"][..],
        ),
        (
            "reverse-proxy-internal",
            &["front-end-pool=198.18.0.0/24", "office-web-apps-farm="][..],
        ),
    ] {
        let mut export = vec!["--role".to_string(), role.into()];
        for a in sets {
            export.extend(["--addresses".into(), (*a).into()]);
        }
        let spec = PolicySpec {
            addresses: sets
                .iter()
                .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
                .collect(),
            ..role_spec(role)
        };
        let mut packets = Vec::new();
        for (name, p) in packets_for(catalog, role, seq) {
            let mut other = p.clone();
            other.src = if p.src.is_ipv4() {
                portguard_testsupport::frames::ip("198.18.0.9")
            } else {
                portguard_testsupport::frames::ip("2001:db8::1:9")
            };
            packets.push((format!("sets: {name}"), p));
            packets.push((format!("sets: {name} from {}", other.src), other));
        }
        cases.push((export, spec, packets));
    }
    cases
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "drop" }
}

#[test]
fn frames_for_injection_are_well_formed() {
    // Not privileged: the probe packets themselves are valid IPv4/IPv6.
    let catalog = Catalog::embedded();
    let mut seq = 0;
    let pkts = packets_for(&catalog, "front-end", &mut seq);
    assert!(
        pkts.len() > 20,
        "front-end yields {} probe packets",
        pkts.len()
    );
    for (name, p) in pkts {
        let f = p.build();
        assert!(
            f.len() >= 14 + 20 + 8,
            "{name}: {} bytes is shorter than any valid probe",
            f.len()
        );
        assert!(
            matches!(p.l4, L4::Tcp { .. } | L4::Udp { .. } | L4::Icmp { .. }),
            "{name}"
        );
    }
}

#[test]
fn the_probe_table_counts_each_packet_by_its_exact_addresses_and_ports() {
    let packets = vec![
        (
            "tcp".to_string(),
            Packet::tcp("198.18.0.1", "198.18.0.2", 20_001, 5061),
        ),
        (
            "udp6".to_string(),
            Packet::udp("2001:db8::1", "2001:db8::2", 20_002, 3478),
        ),
        (
            "echo6".to_string(),
            Packet::icmp("2001:db8::1", "2001:db8::2", 128),
        ),
    ];
    let table = probe_table(&packets);
    let rules: Vec<&str> = table
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("counter"))
        .collect();
    assert_eq!(
        rules,
        [
            r#"ip saddr 198.18.0.1 ip daddr 198.18.0.2 tcp sport 20001 tcp dport 5061 counter comment "0""#,
            r#"ip6 saddr 2001:db8::1 ip6 daddr 2001:db8::2 udp sport 20002 udp dport 3478 counter comment "1""#,
            r#"ip6 saddr 2001:db8::1 ip6 daddr 2001:db8::2 icmpv6 type 128 counter comment "2""#,
        ],
        "in:\n{table}"
    );
}
