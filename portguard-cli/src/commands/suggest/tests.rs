//! `suggest`'s fragment: evidence, ranking, merging, the cap, and that the
//! catalog with the fragment appended always checks.

use super::*;
use portguard::events::store::PortAggregate;

/// A port with `requests` requests from `request_sources` sources and
/// `others` other packets (bare ACKs, answers) from `other_sources`.
fn agg(
    proto: &str,
    port: u16,
    (requests, request_sources): (u64, u64),
    (others, other_sources): (u64, u64),
) -> PortAggregate {
    PortAggregate {
        proto: proto.into(),
        port,
        direction: "inbound".into(),
        verdict: "drop".into(),
        packets: requests + others,
        sources: (request_sources + other_sources).min(64),
        sources_capped: request_sources + other_sources > 64,
        not_allowed: requests + others,
        requests,
        request_sources: request_sources.min(64),
        request_sources_capped: request_sources > 64,
    }
}

fn req(proto: &str, port: u16, requests: u64, sources: u64) -> PortAggregate {
    agg(proto, port, (requests, sources), (0, 0))
}

fn aggregates(roles: &[&str], ports: Vec<PortAggregate>) -> Aggregates {
    Aggregates {
        iface: "eth9".into(),
        roles: roles.iter().map(|r| (*r).to_string()).collect(),
        catalog: None,
        edition: None,
        mode: "enforce".into(),
        ports,
        events_received: 0,
        suppressed: 0,
        ports_overflow: 0,
        ports_evicted: 0,
        ephemeral: Some(LINUX_EPHEMERAL),
        client_media_ports: None,
        refused_peers: Vec::new(),
        refused_peers_overflow: 0,
    }
}

fn default_fragment(a: &Aggregates, options: Options) -> String {
    fragment(&Catalog::embedded(), Catalog::embedded_text(), a, options).expect("no fragment")
}

/// `catalog_text` with `fragment` appended, as `catalog check` reads it.
fn appended(catalog_text: &str, fragment: &str) -> Catalog {
    let combined = format!("{catalog_text}{fragment}");
    assert!(
        combined.len() as u64 <= MAX_CATALOG_BYTES,
        "the catalog with the fragment is {} bytes, over the limit",
        combined.len()
    );
    Catalog::parse(&combined, "appended.toml")
        .unwrap_or_else(|e| {
            panic!("the catalog with the fragment does not check:\n{e}\n{fragment}")
        })
        .0
}

/// The suggested rules of `c` in file order: (protocol, first, last port).
fn suggested(c: &Catalog) -> Vec<(&'static str, u16, u16)> {
    c.rules
        .iter()
        .filter(|r| r.service.starts_with("suggested: "))
        .map(|r| (r.protocols[0].as_str(), r.port_start, r.port_end))
        .collect()
}

#[test]
fn fragment_appended_to_the_default_catalog_passes_catalog_check() {
    let a = aggregates(
        &["front-end"],
        vec![
            req("udp", 161, 20, 2),
            req("tcp", 3389, 3, 2),
            req("udp", 3478, 4, 2),
        ],
    );
    let text = default_fragment(&a, Options::default());
    assert!(
        text.contains("# UDP 161: 20 packet(s) asking for a service (UDP) from 2 distinct"),
        "{text}"
    );
    let with = appended(Catalog::embedded_text(), &text);
    assert_eq!(
        suggested(&with),
        [("udp", 161, 161), ("udp", 3478, 3478), ("tcp", 3389, 3389)],
        "rules (by packets at equal sources):\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("# UDP 3478 is listed for role client")),
        "no hint about the roles listing UDP 3478:\n{text}"
    );

    // The same through `portguard catalog check` on a file.
    let path = std::env::temp_dir().join(format!("pg-suggest-check-{}.toml", std::process::id()));
    std::fs::write(&path, format!("{}{text}", Catalog::embedded_text()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let code = crate::commands::catalog::check(Some(&path), None);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 0, "catalog check exited {code}:\n{text}");
}

#[test]
fn spoofed_acks_and_answers_are_never_rules() {
    let a = aggregates(
        &["front-end"],
        vec![
            // 70 forged bare ACKs from 70 addresses.
            agg("tcp", 3389, (0, 0), (70, 70)),
            // Answers from DNS servers to the host's ephemeral ports.
            agg("udp", 40_000, (0, 0), (3, 1)),
            // Even requests to an ephemeral port are no service.
            req("udp", 45_000, 5, 3),
            req("tcp", 61_000, 4, 4),
        ],
    );
    let text = default_fragment(&a, Options::default());
    let with = appended(Catalog::embedded_text(), &text);
    assert!(
        suggested(&with).is_empty(),
        "rules from no evidence:\n{text}"
    );
    assert!(text.contains("# 0 rule(s) for 0 port(s)."), "{text}");
    let section = |head: &str| -> String {
        let from = text
            .find(head)
            .unwrap_or_else(|| panic!("no {head:?} section:\n{text}"));
        text[from..]
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with("#   "))
            .take_while(|l| l.starts_with("#   "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let not_requests = section("# Not suggested: no request among the packets");
    assert!(
        not_requests.contains("TCP 3389: 70 packet(s), 0 request(s), from 64+ source(s)"),
        "{not_requests}"
    );
    let answers = section("# Not suggested: to the ephemeral ports 32768-60999");
    for want in ["UDP 40000", "UDP 45000", "TCP 61000"] {
        assert!(
            answers.contains(want),
            "{want} not among the answers:\n{text}"
        );
    }
}

#[test]
fn a_scan_from_one_source_is_listed_briefly_never_suggested() {
    let ports = (1..=4_200u16).map(|p| req("tcp", p, 1, 1)).collect();
    let a = aggregates(&["front-end"], ports);
    let text = default_fragment(&a, Options::default());
    let with = appended(Catalog::embedded_text(), &text);
    assert!(
        suggested(&with).is_empty(),
        "a one-source scan became rules:\n{text}"
    );
    let listed = text.lines().filter(|l| l.starts_with("#   TCP ")).count();
    assert!(
        listed <= 2 * MAX_NOTED,
        "{listed} ports listed one by one:\n{text}"
    );
    assert!(
        text.contains("#   ... and "),
        "the rest is not counted:\n{text}"
    );
    assert!(text.len() < 8 * 1024, "{} bytes for a scan", text.len());

    // `--min-sources 1` takes one source as enough, within the cap.
    let text = default_fragment(
        &a,
        Options {
            min_sources: 1,
            ..Options::default()
        },
    );
    let with = appended(Catalog::embedded_text(), &text);
    let ports: u32 = suggested(&with)
        .iter()
        .map(|(_, lo, hi)| u32::from(hi - lo) + 1)
        .sum();
    assert_eq!(
        ports, MAX_SUGGESTED_PORTS as u32,
        "ports suggested:\n{text}"
    );
}

#[test]
fn a_forged_scan_from_many_sources_is_ranked_capped_and_merged() {
    let mut ports: Vec<PortAggregate> = (10_000..14_200u16).map(|p| req("tcp", p, 2, 2)).collect();
    for p in [12_000, 12_001] {
        ports.push(req("tcp", p, 9, 9));
    }
    ports.retain(|p| !(p.requests == 2 && (p.port == 12_000 || p.port == 12_001)));
    let a = aggregates(&["front-end"], ports);
    let text = default_fragment(&a, Options::default());
    let with = appended(Catalog::embedded_text(), &text);
    assert_eq!(
        suggested(&with),
        [("tcp", 12_000, 12_001), ("tcp", 10_000, 10_061)],
        "the best-evidenced ports first, then 62 more up to the cap of 64, merged:\n{text}"
    );
    assert!(
        text.contains("# 4136 more port(s) with evidence enough were left out"),
        "the ports left out are not counted:\n{text}"
    );
    assert!(
        text.contains("# TCP 10000-10061: 124 packet(s) asking for a service (TCP SYN) from 2 distinct source(s) per port"),
        "{text}"
    );
    assert!(text.len() < 16 * 1024, "{} bytes", text.len());
}

#[test]
fn ports_are_ranked_by_distinct_sources_then_packets() {
    let a = aggregates(
        &["front-end"],
        vec![
            req("tcp", 7_005, 1_000, 2),
            req("tcp", 7_003, 10, 3),
            req("udp", 7_012, 100, 3),
            req("tcp", 7_001, 5, 5),
        ],
    );
    let options = Options {
        max_ports: 2,
        ..Options::default()
    };
    let text = default_fragment(&a, options);
    let with = appended(Catalog::embedded_text(), &text);
    assert_eq!(
        suggested(&with),
        [("tcp", 7_001, 7_001), ("udp", 7_012, 7_012)],
        "ranked:\n{text}"
    );
    assert!(
        text.contains("# 2 more port(s) with evidence enough were left out"),
        "{text}"
    );
}

#[test]
fn only_adjacent_ports_of_one_protocol_merge() {
    let a = aggregates(
        &["front-end"],
        vec![
            req("tcp", 7_000, 3, 3),
            req("tcp", 7_001, 3, 3),
            req("tcp", 7_002, 3, 2),
            req("udp", 7_003, 3, 3),
            req("tcp", 7_004, 3, 3),
        ],
    );
    let text = default_fragment(&a, Options::default());
    let with = appended(Catalog::embedded_text(), &text);
    let mut rules = suggested(&with);
    rules.sort();
    assert_eq!(
        rules,
        [
            ("tcp", 7_000, 7_002),
            ("tcp", 7_004, 7_004),
            ("udp", 7_003, 7_003)
        ],
        "merged:\n{text}"
    );
    assert!(
        text.contains("# TCP 7000-7002: 9 packet(s) asking for a service (TCP SYN) from 2-3 distinct source(s) per port"),
        "{text}"
    );
}

#[test]
fn ports_the_catalog_file_already_allows_are_not_suggested_again() {
    let a = aggregates(&["front-end"], vec![req("tcp", 3_389, 4, 2)]);
    let first = default_fragment(&a, Options::default());
    let text1 = format!("{}{first}", Catalog::embedded_text());
    let (catalog1, _) =
        Catalog::parse(&text1, "first.toml").expect("the first fragment does not check");
    // The daemon still counts the drops from before the reload.
    let second = fragment(&catalog1, &text1, &a, Options::default()).expect("no second fragment");
    let with = appended(&text1, &second);
    assert_eq!(
        suggested(&with),
        [("tcp", 3_389, 3_389)],
        "suggested twice:\n{second}"
    );
    assert!(
        second.contains("TCP 3389: 4 packet(s), 4 request(s), from 2 source(s) (front-end: \"suggested: TCP 3389\")"),
        "{second}"
    );

    // The client media rows (1024-65535 in the file) allow only the range
    // the daemon runs with.
    let mut a = aggregates(&["front-end", "client"], vec![req("tcp", 3_389, 4, 2)]);
    let text = default_fragment(&a, Options::default());
    assert!(
        text.contains("# 0 rule(s)") && text.contains("(client: \"Audio\")"),
        "with the media rows at 1024-65535, TCP 3389 is allowed:\n{text}"
    );
    a.client_media_ports = Some((50_000, 50_019));
    let text = default_fragment(&a, Options::default());
    let with = appended(Catalog::embedded_text(), &text);
    assert_eq!(suggested(&with), [("tcp", 3_389, 3_389)], "{text}");
}

/// Ports 20000, 20002, …: never adjacent, so one rule each.
fn spread(n: u16) -> Vec<PortAggregate> {
    (0..n).map(|i| req("tcp", 20_000 + 2 * i, 3, 3)).collect()
}

#[test]
fn the_fragment_keeps_the_catalog_under_its_size_limit() {
    let a = aggregates(&["front-end"], spread(64));
    let base = Catalog::embedded_text();
    let mut text = base.to_string();
    let line = format!("# {}\n", "x".repeat(100));
    while text.len() + line.len() < MAX_CATALOG_BYTES as usize - 6_000 {
        text.push_str(&line);
    }
    let frag = fragment(&Catalog::embedded(), &text, &a, Options::default()).expect("no fragment");
    let with = appended(&text, &frag);
    let n = suggested(&with).len();
    assert!((1..64).contains(&n), "{n} rules in 6,000 bytes:\n{frag}");
    assert!(
        frag.contains("more rule(s) were left out: with them the catalog would pass"),
        "{frag}"
    );

    // No room even for the comments: nothing is printed.
    let full = format!(
        "{base}{}",
        "#\n".repeat((MAX_CATALOG_BYTES as usize - base.len() - 40) / 2)
    );
    let r = fragment(&Catalog::embedded(), &full, &a, Options::default());
    assert!(
        matches!(r, Err(SuggestError::NoRoom)),
        "a catalog 40 bytes under the limit got {r:?}"
    );
}

#[test]
fn the_fragment_keeps_the_catalog_within_its_counter_slots() {
    // 8,180 rules on both protocols: 16,360 of the 16,383 slots.
    let mut text =
        String::from("version = 1\n\n[[role]]\nid = \"x\"\nlabel = \"x\"\ntable = \"server\"\n");
    for port in 1..=8_180u32 {
        let _ = write!(
            text,
            "\n[[rule]]\nrole = \"x\"\nservice = \"s{port}\"\nprotocol = \"both\"\nports = \"{port}\"\ntransport = \"T\"\ntable = \"server\"\nnote = \"\"\n"
        );
    }
    let (catalog, _) = Catalog::parse(&text, "slots.toml").expect("the base catalog");
    let a = aggregates(&["x"], spread(64));
    let frag = fragment(&catalog, &text, &a, Options::default()).expect("no fragment");
    let with = appended(&text, &frag);
    let n = suggested(&with).len();
    assert!(
        (1..=23).contains(&n),
        "{n} rules for 23 free counter slots:\n{frag}"
    );
    assert!(frag.contains("more rule(s) were left out"), "{frag}");
}

#[test]
fn an_instance_without_a_role_gets_an_error() {
    let a = aggregates(&[], vec![req("tcp", 3_389, 4, 2)]);
    let r = fragment(
        &Catalog::embedded(),
        Catalog::embedded_text(),
        &a,
        Options::default(),
    );
    assert!(matches!(r, Err(SuggestError::NoRole)), "{r:?}");
}

/// A daemon on the embedded 2019 edition: the port 2019 dropped (XMPP 5269)
/// is suggested, though the 2015 catalog lists it, and the fragment checks
/// appended to the 2015 text, which has every 2019 role.
#[test]
fn the_2019_edition_in_force_is_the_one_compared_with() {
    let mut a = aggregates(&["access-edge-external"], vec![req("tcp", 5_269, 4, 2)]);
    let in_2015 = default_fragment(&a, Options::default());
    assert!(
        in_2015.contains("# 0 rule(s)"),
        "2015 lists XMPP for the Access Edge:\n{in_2015}"
    );
    a.edition = Some("2019".into());
    let (catalog, text) =
        catalog_in_force(None, a.edition.as_deref()).expect("the 2019 edition loads");
    assert_eq!(catalog, Catalog::edition(Edition::Sfb2019));
    let fragment = fragment(&catalog, &text, &a, Options::default()).expect("no fragment");
    let with = appended(&text, &fragment);
    assert_eq!(suggested(&with), [("tcp", 5_269, 5_269)], "{fragment}");
    assert!(
        fragment.contains("the embedded 2019 edition"),
        "the header names the edition in force:\n{fragment}"
    );
    assert!(
        catalog_in_force(None, Some("2016")).is_err(),
        "an edition this portguard does not know"
    );
}

#[test]
fn refused_peers_are_named_with_the_sets_to_add_them_to() {
    let mut a = aggregates(&["access-edge-external"], Vec::new());
    a.refused_peers = vec![portguard::events::store::RefusedPeer {
        proto: "tcp".into(),
        port: 5061,
        peer: Some("198.19.8.10".parse().unwrap_or_else(|e| panic!("{e}"))),
        verdict: "would_drop".into(),
        packets: 7,
    }];
    let text = default_fragment(&a, Options::default());
    let line = text
        .lines()
        .find(|l| l.contains("198.19.8.10"))
        .unwrap_or_else(|| panic!("the refused peer is not named:\n{text}"));
    assert!(
        line.contains("TCP 5061")
            && line.contains("7 packet(s)")
            && line.contains("federation-partners")
            && line.starts_with('#'),
        "the peer's line names the port, the count and the set, as a comment: {line}"
    );
    let _ = appended(Catalog::embedded_text(), &text);
}
