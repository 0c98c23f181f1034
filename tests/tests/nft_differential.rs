//! The nftables export and the XDP maps enforce the same policy: the same
//! packets, for every role, get the same verdict from `nft` (loaded in a
//! namespace, real frames injected over a veth) and from the XDP program
//! (`BPF_PROG_TEST_RUN`).
//!
//! How the nft verdict is observed: a probe table hooks `input` at a later
//! priority than portguard's chain and counts what reaches it. A packet the
//! exported ruleset accepts goes on to the probe; one it drops never does.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portguard::{
    catalog::{Catalog, Protocol},
    frames::{L4, Packet},
    loader::Classifier,
    policy::{self, Mgmt, PolicySpec, SlotRegistry},
};
use testkit::netns::{NetNs, veth_pair};

const XDP_PASS: u32 = 2;

/// Counts only the kinds of packet the test injects: the kernel's own
/// neighbour discovery (answers to its ICMP errors) must not look like a pass.
const PROBE: &str = "table inet probe {
    chain input {
        type filter hook input priority 100; policy accept;
        meta l4proto { tcp, udp } counter
        icmp type echo-request counter
        icmpv6 type echo-request counter
    }
}
";

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
        .unwrap_or_else(|e| panic!("spawning nft: {e}"));
    child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("nft stdin"))
        .write_all(ruleset.as_bytes())
        .unwrap_or_else(|e| panic!("writing the ruleset to nft: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("nft: {e}"));
    assert!(
        out.status.success(),
        "nft rejected the ruleset: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn probe_count(ns: &NetNs) -> u64 {
    let text = run(Command::new("ip").args([
        "netns",
        "exec",
        ns.name(),
        "nft",
        "list",
        "table",
        "inet",
        "probe",
    ]));
    let words: Vec<&str> = text.split_whitespace().collect();
    let counts: Vec<u64> = words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    assert_eq!(counts.len(), 3, "expected three probe counters in:\n{text}");
    counts.iter().sum()
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
            Protocol::Udp => Packet::udp(src, dst, sport, port).payload(8),
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
    let client = NetNs::new("pgnftc").unwrap_or_else(|e| panic!("netns: {e}"));
    let server = NetNs::new("pgnfts").unwrap_or_else(|e| panic!("netns: {e}"));
    veth_pair(&client, "nftc0", &server, "nfts0").unwrap_or_else(|e| panic!("veth: {e}"));
    for (ns, ifname, v4, v6) in [
        (&client, "nftc0", "198.18.0.1/24", "2001:db8::1/64"),
        (&server, "nfts0", "198.18.0.2/24", "2001:db8::2/64"),
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
    let mut seq = 0u16;
    let mut total = 0usize;
    let mut mismatches = Vec::new();
    for role in catalog.role_ids() {
        let ruleset =
            run(Command::new(&bin).args(["catalog", "export", "--format", "nft", "--role", role]));
        nft_in(&server, "flush ruleset\n");
        nft_in(&server, &ruleset);
        nft_in(&server, PROBE);

        let spec = PolicySpec {
            default_roles: Some(vec![role.to_string()]),
            mgmt: Mgmt::defaults(),
            ..PolicySpec::default()
        };
        let mut registry = SlotRegistry::default();
        let compiled = policy::compile(&catalog, &spec, &mut registry)
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        let mut xdp = Classifier::load(None).unwrap_or_else(|e| panic!("load: {e}"));
        xdp.install(&compiled, 1)
            .unwrap_or_else(|e| panic!("install: {e}"));

        for (name, mut pkt) in packets_for(&catalog, role, &mut seq) {
            pkt.src_mac = client_mac;
            pkt.dst_mac = server_mac;
            let frame = pkt.build();
            let xdp_pass = xdp
                .test_run(&frame, 1)
                .unwrap_or_else(|e| panic!("test_run: {e}"))
                .return_value
                == XDP_PASS;
            let before = probe_count(&server);
            injector
                .send(&frame)
                .unwrap_or_else(|e| panic!("sending a raw frame: {e}"));
            // Delivery over veth is synchronous in practice; allow a short grace.
            let deadline = Instant::now() + Duration::from_millis(if xdp_pass { 500 } else { 30 });
            let mut nft_pass = false;
            while Instant::now() < deadline {
                if probe_count(&server) > before {
                    nft_pass = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
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
