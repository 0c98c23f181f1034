use proptest::prelude::*;

use super::{
    Catalog, Diagnostic, Direction, EffectiveRule, MatchSide, Protocol, SeedTable, Severity,
    assign_ports,
};
use crate::policy::{Mgmt, Placement, PolicySpec, ProfileArg};

/// The role ids of the team's roles contract, in its order: the 17 of the
/// server ports document, then the perimeter roles (and the two load-balancer
/// VIP roles the Edge document's hardware-load-balancer tables call for).
const DESIGN_ROLE_IDS: [&str; 30] = [
    "all-servers",
    "front-end",
    "front-end-mediation",
    "front-end-cms",
    "all-internal-servers",
    "office-web-apps",
    "director",
    "mediation",
    "persistent-chat",
    "lb-front-end",
    "lb-front-end-mediation",
    "lb-mediation",
    "lb-director",
    "lb-dns-front-end",
    "lb-dns-director",
    "client",
    "ip-phone",
    "access-edge-external",
    "webconf-edge-external",
    "av-edge-external",
    "consolidated-edge-external",
    "edge-internal",
    "lb-edge-external",
    "lb-edge-internal",
    "reverse-proxy-external",
    "reverse-proxy-internal",
    "hybrid-access-edge-external",
    "hybrid-av-edge-external",
    "hybrid-edge-external",
    "hybrid-client",
];

/// Two roles, `a` includes `b`; 15 lines.
const BASE: &str = r#"version = 1
[settings]
client_media_ports = "1024-65535"

[[role]]
id = "a"
label = "A"
table = "server"
includes = ["b"]
why = "test"

[[role]]
id = "b"
label = "B"
table = "server"
"#;

fn rule(role: &str, protocol: &str, ports: &str, service: &str) -> String {
    format!(
        "\n[[rule]]\nrole = \"{role}\"\nservice = \"{service}\"\nprotocol = \"{protocol}\"\nports = {ports}\n\
         transport = \"TCP\"\ntable = \"server\"\nnote = \"n\"\n"
    )
}

/// The 1-based line of the only occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "`{needle}` should occur on exactly one line, found on {hits:?}"
    );
    hits[0]
}

fn errors_of(text: &str) -> Vec<Diagnostic> {
    match Catalog::parse(text, "t.toml") {
        Ok((_, warnings)) => panic!("expected errors, the catalog parsed (warnings: {warnings:?})"),
        Err(e) => e
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

fn assert_one_error(text: &str, line: usize, contains: &str) -> Diagnostic {
    let errors = errors_of(text);
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}"
    );
    let d = errors.into_iter().next().unwrap_or_else(|| unreachable!());
    assert_eq!(
        d.line, line,
        "error `{}` at line {}, expected line {line}",
        d.message, d.line
    );
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.origin, "t.toml");
    assert!(
        d.message.contains(contains),
        "message `{}` should contain `{contains}`",
        d.message
    );
    d
}

fn parse_ok(text: &str) -> (Catalog, Vec<Diagnostic>) {
    Catalog::parse(text, "t.toml").expect("expected the catalog to parse")
}

#[test]
fn base_with_one_rule_parses() {
    let text = format!("{BASE}{}", rule("a", "tcp", "\"5061\"", "S"));
    let (c, warnings) = parse_ok(&text);
    assert!(warnings.is_empty(), "no warnings expected: {warnings:?}");
    assert_eq!(c.rules.len(), 1);
    assert_eq!(
        c.rules[0].line, 17,
        "the rule's line is its [[rule]] header"
    );
    assert_eq!((c.rules[0].port_start, c.rules[0].port_end), (5061, 5061));
    assert_eq!(c.role_ids(), vec!["a", "b"]);
}

#[test]
fn integer_port_is_accepted() {
    let text = format!("{BASE}{}", rule("a", "udp", "3478", "S"));
    let (c, _) = parse_ok(&text);
    assert_eq!((c.rules[0].port_start, c.rules[0].port_end), (3478, 3478));
    assert_eq!(c.rules[0].protocols, vec![Protocol::Udp]);
}

#[test]
fn unknown_key_is_an_error_at_its_line() {
    let text = format!(
        "{BASE}{}colour = \"red\"\n",
        rule("a", "tcp", "\"5061\"", "S")
    );
    let line = line_of(&text, "colour");
    assert_eq!(line, 25);
    assert_one_error(&text, line, "colour");
}

#[test]
fn media_path_is_a_role_attribute_checked_at_its_line() {
    // `b` (included by `a`) is on a media path; `a` is not marked itself.
    let text = format!(
        "{}media_path = true\n{}",
        BASE,
        rule("a", "tcp", "\"5061\"", "S")
    );
    let (c, _) = parse_ok(&text);
    let marked = |id: &str| c.role(id).is_some_and(|r| r.media_path);
    assert!(marked("b") && !marked("a"), "only b says media_path = true");
    let bad = text.replace("media_path = true", "media_path = \"yes\"");
    assert_one_error(&bad, line_of(&bad, "media_path"), "boolean");
    let embedded = Catalog::embedded();
    let marked: Vec<&str> = embedded
        .roles
        .iter()
        .filter(|r| r.media_path)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        marked,
        ["front-end-mediation", "all-internal-servers", "mediation"],
        "the roles on a media path in the default catalog"
    );
}

#[test]
fn unknown_role_in_a_rule() {
    let text = format!("{BASE}{}", rule("nope", "tcp", "\"5061\"", "S"));
    let d = assert_one_error(&text, 18, "unknown role `nope`");
    assert_eq!(d.column, 8, "the column of the value");
    assert!(
        d.hint.as_deref().is_some_and(|h| h.contains("a, b")),
        "hint lists known roles: {:?}",
        d.hint
    );
}

#[test]
fn unknown_role_in_includes() {
    let text = BASE.replace("includes = [\"b\"]", "includes = [\"b\", \"zz\"]");
    assert_one_error(&text, 9, "unknown role `zz` in includes");
}

#[test]
fn include_cycle() {
    let text = format!("{BASE}includes = [\"a\"]\n");
    let d = assert_one_error(&text, 16, "include cycle");
    assert!(
        d.message.contains("a -> b -> a"),
        "cycle path in `{}`",
        d.message
    );
    let selfish = BASE.replace("includes = [\"b\"]", "includes = [\"a\"]");
    assert_one_error(&selfish, 9, "include cycle: a -> a");
}

#[test]
fn port_zero_too_big_and_reversed() {
    for (ports, contains) in [
        ("\"0\"", "port 0"),
        ("0", "port 0"),
        ("\"65536\"", "port 65536"),
        ("65536", "port 65536"),
        ("\"1-65536\"", "port 65536"),
        ("\"600-500\"", "start 600 is greater than its end 500"),
        ("\"http\"", "not a port"),
        ("[1, 2]", "string or an integer"),
    ] {
        let text = format!("{BASE}{}", rule("a", "tcp", ports, "S"));
        assert_one_error(&text, 21, contains);
    }
}

#[test]
fn unknown_protocol() {
    let text = format!("{BASE}{}", rule("a", "sctp", "\"5061\"", "S"));
    assert_one_error(&text, 20, "unknown protocol `sctp`");
}

#[test]
fn empty_service() {
    let text = format!("{BASE}{}", rule("a", "tcp", "\"5061\"", "  "));
    assert_one_error(&text, 19, "empty service");
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let text = format!(
        "{BASE}{}{}",
        rule("a", "sctp", "\"5061\"", "S"),
        rule("a", "tcp", "\"0\"", "S")
    );
    let lines: Vec<usize> = errors_of(&text).iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![20, 30], "both errors, in order");
}

#[test]
fn duplicate_rule_is_an_error_naming_the_first() {
    let text = format!(
        "{BASE}{}{}",
        rule("a", "tcp", "\"5061\"", "S"),
        rule("a", "tcp", "5061", "S")
    );
    let d = assert_one_error(&text, 26, "duplicate rule, first at line 17");
    assert!(d.hint.is_some());
}

#[test]
fn same_ports_other_service_is_an_overlap_warning() {
    let text = format!(
        "{BASE}{}{}",
        rule("a", "tcp", "\"443\"", "S"),
        rule("b", "tcp", "\"400-500\"", "T")
    );
    let (_, warnings) = parse_ok(&text);
    assert_eq!(warnings.len(), 1, "one overlap warning: {warnings:#?}");
    let w = &warnings[0];
    assert_eq!((w.severity, w.line), (Severity::Warning, 26));
    assert!(
        w.message.contains("line 17"),
        "names the other rule's line: {}",
        w.message
    );
    assert!(
        w.hint.as_deref().is_some_and(|h| h.contains("line 17")),
        "the narrower rule (line 17) wins: {:?}",
        w.hint
    );
}

#[test]
fn too_small_media_range() {
    let media = format!(
        "{}media = true\n",
        rule("a", "both", "\"1024-65535\"", "Audio")
    );
    let text = format!("{BASE}{media}").replace("\"1024-65535\"\n\n", "\"50000-50018\"\n\n");
    let d = assert_one_error(&text, 3, "at least 20 ports");
    assert!(d.message.contains("19 ports"), "{}", d.message);

    let ok = format!("{BASE}{media}").replace("\"1024-65535\"\n\n", "\"50000-50019\"\n\n");
    let (c, _) = parse_ok(&ok);
    assert_eq!(
        (c.rules[0].port_start, c.rules[0].port_end),
        (50000, 50019),
        "media rule narrowed"
    );
    assert_eq!(c.rules[0].declared, (1024, 65535));

    let wide = format!("{BASE}{media}").replace("\"1024-65535\"\n\n", "\"1000-65535\"\n\n");
    assert_one_error(&wide, 3, "not within 1024-65535");
}

#[test]
fn with_client_media_override() {
    let c = Catalog::embedded();
    let e = c
        .with_client_media(50000, 50018)
        .expect_err("19 ports must be refused");
    assert_eq!(e.diagnostics[0].origin, "--client-media-ports");
    assert!(
        e.to_string()
            .contains("(ClientMediaPortRange) ask for at least 20 ports"),
        "{e}"
    );
    assert!(
        c.with_client_media(500, 2000).is_err(),
        "must stay within the rows' 1024-65535"
    );
    let n = c
        .with_client_media(50000, 50019)
        .unwrap_or_else(|e| panic!("{e}"));
    let rules = n
        .effective_rules(&["client".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    let media: Vec<&EffectiveRule> = rules.iter().filter(|r| r.media).collect();
    assert_eq!(
        media.len(),
        6,
        "audio and video (tcp+udp), p2p and app sharing (tcp)"
    );
    assert!(
        media
            .iter()
            .all(|r| (r.port_start, r.port_end) == (50000, 50019)),
        "{media:#?}"
    );
    let fixed = rules
        .iter()
        .find(|r| r.port_start == 3478)
        .expect("3478 kept");
    assert_eq!(fixed.port_end, 3478);
}

#[test]
fn non_utf8_names_the_line() {
    let mut bytes = b"version = 1\n# ok\n# caf".to_vec();
    bytes.push(0xFF);
    bytes.extend_from_slice(b"\n");
    let e = Catalog::from_bytes(&bytes, "t.toml").expect_err("must be refused");
    let d = &e.diagnostics[0];
    assert_eq!(
        (d.line, d.column, d.severity),
        (3, 6, Severity::Error),
        "{d}"
    );
    assert!(d.message.contains("not UTF-8"), "{}", d.message);
}

#[test]
fn not_toml_at_all() {
    assert_one_error("version = 1\nthis is not toml\n", 2, "");
    let d = assert_one_error("<html>\n", 1, "");
    assert!(
        d.hint.as_deref().is_some_and(|h| h.contains("TOML")),
        "{:?}",
        d.hint
    );
}

#[test]
fn missing_file_is_a_line_zero_error() {
    let e =
        Catalog::load(std::path::Path::new("/nonexistent/catalog.toml")).expect_err("must fail");
    assert_eq!(e.diagnostics[0].line, 0);
    assert_eq!(
        e.to_string().lines().next(),
        Some(e.diagnostics[0].to_string().as_str())
    );
    assert!(
        e.to_string()
            .starts_with("/nonexistent/catalog.toml: error: cannot read"),
        "{e}"
    );
}

#[test]
fn diagnostic_display() {
    let d = Diagnostic {
        origin: "f.toml".into(),
        line: 3,
        column: 9,
        severity: Severity::Warning,
        message: "m".into(),
        hint: Some("h".into()),
    };
    assert_eq!(d.to_string(), "f.toml:3:9: warning: m\n  hint: h");
}

#[test]
fn embedded_parses_without_errors() {
    let text = Catalog::embedded_text();
    let (c, warnings) =
        Catalog::parse(text, super::EMBEDDED_NAME).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
    assert_eq!(
        c.role_ids(),
        DESIGN_ROLE_IDS.to_vec(),
        "the role ids of the roles contract, in its order"
    );
    assert_eq!(c.ipsec.len(), 15, "every row of the IPsec exception table");
    assert_eq!(c.client_media, (1024, 65535));
    assert_eq!(Catalog::embedded(), c);
}

#[test]
fn embedded_inclusions() {
    let c = Catalog::embedded();
    let resolved = |r: &str| {
        c.resolve_roles(&[r.to_string()])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(
        resolved("front-end-mediation"),
        [
            "front-end-mediation",
            "front-end",
            "all-servers",
            "all-internal-servers"
        ]
    );
    assert_eq!(
        resolved("mediation"),
        ["mediation", "all-servers", "all-internal-servers"]
    );
    assert_eq!(resolved("director"), ["director", "all-servers"]);
    assert_eq!(resolved("office-web-apps"), ["office-web-apps"]);
    assert_eq!(resolved("lb-front-end"), ["lb-front-end"]);
}

#[test]
fn effective_rules_dedup_and_unknown_role() {
    let c = Catalog::embedded();
    let rules = c
        .effective_rules(&["front-end".into(), "mediation".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    let sql = rules.iter().filter(|r| r.port_start == 1434).count();
    assert_eq!(
        sql, 1,
        "SQL Browser once although both roles include all-servers"
    );
    let lines: Vec<usize> = rules.iter().map(|r| r.line).collect();
    assert!(
        lines.windows(2).all(|w| w[0] <= w[1]),
        "catalog order: {lines:?}"
    );

    let e = c
        .effective_rules(&["front-end".into(), "edge".into()])
        .expect_err("edge");
    let msg = e.to_string();
    assert!(
        msg.contains("unknown role `edge`") && msg.contains("front-end-mediation"),
        "{msg}"
    );
}

#[test]
fn merged_document_duplicates() {
    let c = Catalog::embedded();
    let count = |role: &str, port: u16| {
        c.rules
            .iter()
            .filter(|r| r.role == role && r.port_start == port)
            .count()
    };
    assert_eq!(count("all-servers", 1434), 1);
    assert_eq!(count("mediation", 5070), 1);
    assert_eq!(
        count("front-end", 443),
        2,
        "Web Compatibility and Mobility stay apart: the services differ"
    );
    let sql = c
        .rules
        .iter()
        .find(|r| r.port_start == 1434)
        .unwrap_or_else(|| unreachable!());
    assert!(
        sql.note.starts_with("listed twice in the document; merged"),
        "{}",
        sql.note
    );
}

#[test]
fn dhcp_is_split_by_side() {
    let c = Catalog::embedded();
    for role in ["client", "ip-phone"] {
        let own = c.own_rules(role);
        let side = |p: u16| {
            own.iter()
                .find(|r| r.port_start == p)
                .map(|r| (r.protocol, r.side))
        };
        assert_eq!(
            side(68),
            Some((Protocol::Udp, MatchSide::Destination)),
            "{role}"
        );
        assert_eq!(side(67), Some((Protocol::Udp, MatchSide::Source)), "{role}");
        let assigned = assign_ports(&own);
        assert!(
            !assigned
                .iter()
                .any(|a| a.protocol == Protocol::Udp && a.start <= 67 && 67 <= a.end),
            "udp 67 is the peer's port and must not be assigned for {role}: {assigned:?}"
        );
    }
}

fn owner(rules: &[EffectiveRule], proto: Protocol, port: u16) -> Option<&EffectiveRule> {
    assign_ports(rules)
        .into_iter()
        .find(|a| a.protocol == proto && a.start <= port && port <= a.end)
        .map(|a| &rules[a.rule])
}

#[test]
fn assign_ports_precedence_front_end() {
    let c = Catalog::embedded();
    let rules = c
        .effective_rules(&["front-end".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    let who =
        |proto, port| owner(&rules, proto, port).map(|r| (r.role.as_str(), r.service.as_str()));
    let media = ("all-internal-servers", "Various");
    let video = (
        "front-end",
        "Skype for Business Server Audio/Video Conferencing service",
    );
    for port in [49152, 50000, 57500] {
        assert_eq!(
            who(Protocol::Tcp, port),
            Some(media),
            "tcp {port}: narrowest is 49152-57500"
        );
        assert_eq!(who(Protocol::Udp, port), Some(media), "udp {port}");
    }
    for port in [57501, 60000, 65535] {
        assert_eq!(
            who(Protocol::Tcp, port),
            Some(video),
            "tcp {port}: 57501-65535 is narrower than app sharing"
        );
        assert_eq!(who(Protocol::Udp, port), Some(video), "udp {port}");
    }
    assert_eq!(
        who(Protocol::Tcp, 443),
        Some((
            "front-end",
            "Skype for Business Server Web Compatibility service"
        )),
        "equal width: the earlier rule wins"
    );
    assert_eq!(
        who(Protocol::Udp, 1434),
        Some(("all-servers", "SQL Browser"))
    );
    assert_eq!(who(Protocol::Tcp, 1434), None);
    assert_eq!(who(Protocol::Tcp, 49151), None);
    assert_eq!(who(Protocol::Udp, 443), None);

    // Sorted by (protocol, start) and not overlapping.
    let a = assign_ports(&rules);
    for w in a.windows(2) {
        assert!(
            (w[0].protocol, w[0].end) < (w[1].protocol, w[1].start),
            "sorted and disjoint: {:?} {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn assign_ports_client_media_and_fixed_ports() {
    let c = Catalog::embedded();
    let rules = c
        .effective_rules(&["client".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    let who = |proto, port| owner(&rules, proto, port).map(|r| r.service.as_str());
    assert_eq!(
        who(Protocol::Tcp, 443),
        Some("Client-to-server SIP (external user access)")
    );
    assert_eq!(
        who(Protocol::Udp, 3478),
        Some("A/V sessions and media over UDP (external user access)")
    );
    assert_eq!(
        who(Protocol::Tcp, 6891),
        Some("File transfer with previous clients")
    );
    assert_eq!(
        who(Protocol::Tcp, 2000),
        Some("Audio"),
        "the media rows overlap fully: the first wins"
    );
    assert_eq!(who(Protocol::Udp, 68), Some("DHCP (Registrar discovery)"));
    assert_eq!(who(Protocol::Tcp, 1023), None);
}

fn arb_rule() -> impl Strategy<Value = EffectiveRule> {
    (
        any::<bool>(),
        1u16..=65535,
        0u16..2000,
        prop_oneof![4 => Just(MatchSide::Destination), 1 => Just(MatchSide::Source)],
        prop_oneof![3 => Just(Direction::Inbound), 1 => Just(Direction::Outbound)],
    )
        .prop_map(|(tcp, start, len, side, direction)| EffectiveRule {
            role: "r".into(),
            service: format!("s{start}"),
            protocol: if tcp { Protocol::Tcp } else { Protocol::Udp },
            port_start: start,
            port_end: start.saturating_add(len),
            transport: "t".into(),
            table: SeedTable::Server,
            side,
            direction,
            note: String::new(),
            line: 0,
            media: false,
            payload: super::Payload::Any,
            peers: Vec::new(),
        })
}

proptest! {
    #[test]
    fn assign_ports_covers_every_destination_port_once(rules in proptest::collection::vec(arb_rule(), 0..12), probes in proptest::collection::vec(1u16..=65535, 50)) {
        let a = assign_ports(&rules);
        for x in &a {
            let r = &rules[x.rule];
            prop_assert!(r.side == MatchSide::Destination && r.direction == Direction::Inbound && r.protocol == x.protocol, "{x:?} from {r:?}");
            prop_assert!(r.port_start <= x.start && x.end <= r.port_end, "{x:?} outside its rule {r:?}");
        }
        for w in a.windows(2) {
            prop_assert!((w[0].protocol, w[0].end) < (w[1].protocol, w[1].start), "overlap or disorder: {:?} {:?}", w[0], w[1]);
        }
        // Every port of every destination rule, at its edges and at random probes.
        let mut ports: Vec<(Protocol, u16)> = Vec::new();
        let compiled = |r: &EffectiveRule| r.side == MatchSide::Destination && r.direction == Direction::Inbound;
        for r in rules.iter().filter(|r| compiled(r)) {
            ports.extend([(r.protocol, r.port_start), (r.protocol, r.port_end)]);
        }
        for p in probes { ports.extend([(Protocol::Tcp, p), (Protocol::Udp, p)]); }
        for (proto, port) in ports {
            let hits: Vec<_> = a.iter().filter(|x| x.protocol == proto && x.start <= port && port <= x.end).collect();
            let best = rules.iter().enumerate()
                .filter(|(_, r)| compiled(r) && r.protocol == proto && r.port_start <= port && port <= r.port_end)
                .min_by_key(|(i, r)| (r.width(), *i)).map(|(i, _)| i);
            match best {
                None => prop_assert!(hits.is_empty(), "{proto} {port} assigned without a rule: {hits:?}"),
                Some(i) => {
                    prop_assert_eq!(hits.len(), 1, "{} {} covered {} times", proto, port, hits.len());
                    prop_assert_eq!(hits[0].rule, i, "{} {}: wrong winner", proto, port);
                }
            }
        }
    }
}

#[test]
fn nft_merges_intervals() {
    assert_eq!(
        super::nft::merged(vec![
            (443, 443),
            (49152, 65535),
            (57501, 65535),
            (444, 444),
            (1, 3)
        ]),
        vec![(1, 3), (443, 444), (49152, 65535)]
    );
}

/// `rule(...)` with a `direction` line before its note.
fn rule_dir(role: &str, protocol: &str, ports: &str, service: &str, direction: &str) -> String {
    rule(role, protocol, ports, service).replace(
        "note = \"n\"\n",
        &format!("direction = {direction}\nnote = \"n\"\n"),
    )
}

#[test]
fn direction_defaults_to_inbound_and_reads_outbound() {
    let text = format!(
        "{BASE}{}{}",
        rule("a", "tcp", "\"5061\"", "S"),
        rule_dir("a", "tcp", "\"5061\"", "S", "\"outbound\"")
    );
    let (c, warnings) = parse_ok(&text);
    assert!(
        warnings.is_empty(),
        "an inbound and an outbound rule on one port neither duplicate nor overlap: {warnings:#?}"
    );
    let dirs: Vec<Direction> = c.rules.iter().map(|r| r.direction).collect();
    assert_eq!(dirs, [Direction::Inbound, Direction::Outbound]);
    let own = c.own_rules("a");
    assert_eq!(
        own.iter().map(|r| r.direction).collect::<Vec<_>>(),
        [Direction::Inbound, Direction::Outbound],
        "effective rules keep the direction"
    );
    let assigned = assign_ports(&own);
    assert_eq!(
        assigned.len(),
        1,
        "only the inbound rule is compiled: {assigned:?}"
    );
    assert_eq!(assigned[0].rule, 0);
}

#[test]
fn unknown_direction_is_an_error_at_its_line_and_column() {
    let text = format!(
        "{BASE}{}",
        rule_dir("a", "tcp", "\"5061\"", "S", "\"sideways\"")
    );
    let line = line_of(&text, "sideways");
    assert_eq!(line, 24);
    let d = assert_one_error(&text, line, "unknown direction `sideways`");
    assert_eq!(d.column, 13, "the column of the value");
    assert!(
        d.hint
            .as_deref()
            .is_some_and(|h| h.contains("`inbound`") && h.contains("`outbound`")),
        "{:?}",
        d.hint
    );
    // Not a string: the deserializer's error, at the value.
    let text = format!("{BASE}{}", rule_dir("a", "tcp", "\"5061\"", "S", "1"));
    assert_one_error(&text, 24, "");
}

#[test]
fn duplicate_needs_the_same_direction() {
    let text = format!(
        "{BASE}{}{}",
        rule_dir("a", "tcp", "\"5061\"", "S", "\"outbound\""),
        rule_dir("a", "tcp", "5061", "S", "\"outbound\"")
    );
    assert_one_error(&text, 27, "duplicate rule, first at line 17");
    // An explicit inbound is the same as the default.
    let text = format!(
        "{BASE}{}{}",
        rule("a", "tcp", "\"5061\"", "S"),
        rule_dir("a", "tcp", "5061", "S", "\"inbound\"")
    );
    assert_one_error(&text, 26, "duplicate rule, first at line 17");
}

#[test]
fn overlaps_are_reported_within_one_direction() {
    let text = format!(
        "{BASE}{}{}{}",
        rule_dir("a", "tcp", "\"443\"", "S", "\"outbound\""),
        rule_dir("b", "tcp", "\"400-500\"", "T", "\"outbound\""),
        rule("b", "tcp", "\"443\"", "U")
    );
    let (_, warnings) = parse_ok(&text);
    assert_eq!(
        warnings.len(),
        1,
        "the two outbound rules overlap; the inbound one meets neither: {warnings:#?}"
    );
    assert_eq!(warnings[0].line, 27);
    assert!(
        warnings[0]
            .message
            .starts_with("outbound tcp 443 of this rule"),
        "{}",
        warnings[0].message
    );
}

#[test]
fn outbound_rule_cannot_match_the_source_port() {
    let text = format!(
        "{BASE}{}match = \"source\"\n",
        rule_dir("a", "udp", "\"67\"", "S", "\"outbound\"")
    );
    let line = line_of(&text, "match = ");
    assert_one_error(&text, line, "an outbound rule matches the destination port");
}

#[test]
fn embedded_perimeter_rules_state_their_direction() {
    // Explicit is better for new rows: every rule from an Edge or reverse-proxy
    // table writes `direction`, the server ports document's rows leave it out.
    let doc: toml::Value =
        toml::from_str(Catalog::embedded_text()).expect("the embedded catalog is TOML");
    let rules = doc
        .get("rule")
        .and_then(toml::Value::as_array)
        .expect("no [[rule]]");
    let mut perimeter = 0;
    for r in rules {
        let table = r
            .get("table")
            .and_then(toml::Value::as_str)
            .unwrap_or_default();
        let t = SeedTable::from_word(table).unwrap_or_else(|| panic!("table {table}"));
        let from_server_ports = t.document() == super::SERVER_PORTS_DOCUMENT;
        assert_eq!(
            r.get("direction").is_none(),
            from_server_ports,
            "direction key of {r:?}"
        );
        if !from_server_ports {
            perimeter += 1;
        }
    }
    assert_eq!(
        perimeter,
        44 + 10,
        "the perimeter rules and the 10 Microsoft 365 hybrid rules"
    );
    let c = Catalog::embedded();
    assert!(
        c.rules
            .iter()
            .filter(|r| r.table.document() == super::SERVER_PORTS_DOCUMENT)
            .all(|r| r.direction == Direction::Inbound),
        "the server, load-balancer and client rows are inbound"
    );
}

#[test]
fn embedded_perimeter_inclusions() {
    let c = Catalog::embedded();
    let resolved = c
        .resolve_roles(&["consolidated-edge-external".to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        resolved,
        [
            "consolidated-edge-external",
            "access-edge-external",
            "webconf-edge-external",
            "av-edge-external"
        ]
    );
    for id in [
        "access-edge-external",
        "webconf-edge-external",
        "av-edge-external",
        "edge-internal",
        "lb-edge-external",
        "lb-edge-internal",
        "reverse-proxy-external",
        "reverse-proxy-internal",
    ] {
        assert_eq!(
            c.resolve_roles(&[id.to_string()])
                .unwrap_or_else(|e| panic!("{e}")),
            [id],
            "{id} includes nothing"
        );
    }
}

#[test]
fn nft_export_puts_outbound_rows_in_an_accepting_output_chain() {
    let text = nft(host(&["av-edge-external"], true)).unwrap_or_else(|e| panic!("{e}"));
    let set = |name: &str| {
        let start = text
            .find(&format!("set {name} {{"))
            .unwrap_or_else(|| panic!("no set {name} in:\n{text}"));
        let rest = &text[start..];
        rest[..rest.find("\n\t}").unwrap_or(rest.len())].to_string()
    };
    // Inbound 3478 is a media row: its set of its own, and the check.
    assert!(
        set("av_edge_external_udp_media").contains("elements = { 3478 }"),
        "{text}"
    );
    assert!(!text.contains("set av_edge_external_udp {"), "{text}");
    for line in [
        "udp dport @av_edge_external_udp_media udp sport @reflection_ports counter drop comment \"reflection\"",
        "udp dport @av_edge_external_udp_media @th,64,16 0x0001-0x0003 meter stun4_av_edge_external size 65535 { ip saddr limit rate over 25/second burst 50 packets } counter drop comment \"rate_limited\"",
        "meter stunnet6_av_edge_external size 65535 { ip6 saddr and ffff:ffff:ffff:: limit rate over 250/second burst 500 packets }",
        "udp dport @av_edge_external_udp_media @th,64,8 { 0-3, 16-25, 32-191, 255 } counter accept",
        "udp dport @av_edge_external_udp_media counter drop comment \"not_media\"",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(
        set("reflection_ports").contains("19, 53, 69, 111, 123, 137, 161, 389"),
        "{text}"
    );
    assert!(
        set("av_edge_external_tcp").contains("elements = { 443 }"),
        "{text}"
    );
    assert!(
        set("av_edge_external_udp_out").contains("elements = { 3478, 50000-59999 }"),
        "{text}"
    );
    assert!(
        text.contains("type filter hook output priority filter; policy accept;"),
        "{text}"
    );
    assert!(text.contains("\t\tjump out_av_edge_external\n"), "{text}");
    // A role without outbound rows gets no output chain.
    let fe = nft(host(&["front-end"], false)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!fe.contains("hook output"), "{fe}");
}

/// The embedded catalog's nft export of `spec`.
fn nft(spec: PolicySpec) -> Result<String, crate::policy::PolicyError> {
    crate::policy::resolve(&Catalog::embedded(), &spec).map(|r| super::nft::export(&r))
}

/// A host running `roles`, with the default lockout guard or none.
fn host(roles: &[&str], default_mgmt: bool) -> PolicySpec {
    PolicySpec {
        default_roles: Some(roles.iter().map(|r| r.to_string()).collect()),
        mgmt: Mgmt::with_default(default_mgmt, &[]),
        ..PolicySpec::default()
    }
}

/// `placement` with `--role roles` (none when empty) and these profiles.
fn with_profiles(
    placement: Placement,
    roles: &[&str],
    profiles: &[(&str, &[&str])],
    default_mgmt: bool,
) -> PolicySpec {
    PolicySpec {
        default_roles: (!roles.is_empty()).then(|| roles.iter().map(|r| r.to_string()).collect()),
        profiles: profiles
            .iter()
            .map(|(cidr, roles)| ProfileArg {
                prefix: cidr.parse().unwrap_or_else(|e| panic!("{cidr}: {e}")),
                roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .collect(),
        mgmt: Mgmt::with_default(default_mgmt, &[]),
        placement,
        ..PolicySpec::default()
    }
}

/// The body of chain `name` (up to its closing brace).
fn chain_body(text: &str, name: &str) -> String {
    let start = text
        .find(&format!("\tchain {name} {{\n"))
        .unwrap_or_else(|| panic!("no chain {name} in:\n{text}"));
    let rest = &text[start..];
    rest[..rest.find("\n\t}").unwrap_or(rest.len())].to_string()
}

/// The always-allowed traffic the export writes is the set the XDP
/// program passes (`classifier_common::essentials`), type by type.
#[test]
fn nft_essentials_are_the_xdp_programs() {
    use classifier_common::essentials as e;
    let text = nft(host(&["director"], false)).unwrap_or_else(|err| panic!("{err}"));
    let types = |keyword: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(keyword))
            .unwrap_or_else(|| panic!("no `{keyword}` rule in:\n{text}"));
        let inner = &line[line.find('{').unwrap_or(0) + 1..line.find('}').unwrap_or(0)];
        inner.split(',').map(|t| t.trim().to_string()).collect()
    };
    // nft's names of the types, by number (as `nft describe` lists them).
    let v4 = [
        (0, "echo-reply"),
        (3, "destination-unreachable"),
        (8, "echo-request"),
        (11, "time-exceeded"),
        (12, "parameter-problem"),
    ];
    let v6 = [
        (1, "destination-unreachable"),
        (2, "packet-too-big"),
        (3, "time-exceeded"),
        (4, "parameter-problem"),
        (128, "echo-request"),
        (129, "echo-reply"),
        (130, "mld-listener-query"),
        (131, "mld-listener-report"),
        (132, "mld-listener-done"),
        (133, "nd-router-solicit"),
        (134, "nd-router-advert"),
        (135, "nd-neighbor-solicit"),
        (136, "nd-neighbor-advert"),
        (137, "nd-redirect"),
        (143, "mld2-listener-report"),
    ];
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let expected = |names: &[(u8, &str)], pass: &dyn Fn(u8) -> bool| -> Vec<String> {
        sorted(
            (0..=u8::MAX)
                .filter(|t| pass(*t))
                .map(|t| {
                    names
                        .iter()
                        .find(|(n, _)| *n == t)
                        .map_or_else(|| t.to_string(), |(_, name)| name.to_string())
                })
                .collect(),
        )
    };
    assert_eq!(
        sorted(types("icmp type")),
        expected(&v4, &|t| e::icmp4_error(t)
            || t == e::ICMP4_ECHO_REQUEST
            || t == e::ICMP4_ECHO_REPLY),
        "ICMP types in:\n{text}"
    );
    assert_eq!(
        sorted(types("icmpv6 type")),
        expected(&v6, &|t| e::icmp6_error(t)
            || e::icmp6_neighbor_discovery(t)
            || t == e::ICMP6_ECHO_REQUEST
            || t == e::ICMP6_ECHO_REPLY),
        "ICMPv6 types in:\n{text}"
    );
    for (sport, dport) in e::DHCP_REPLIES {
        assert!(
            text.contains(&format!(
                "udp sport {sport} udp dport {dport} counter accept"
            )),
            "DHCP reply {sport} -> {dport} missing from:\n{text}"
        );
    }
}

#[test]
fn nft_appliance_orders_each_side_longest_prefix_first_with_goto() {
    let text = nft(with_profiles(
        Placement::Appliance,
        &[],
        &[
            ("198.18.2.0/24", &["edge-internal"]),
            ("198.18.2.10/32", &["access-edge-external"]),
            ("2001:db8:2::/64", &["edge-internal"]),
            ("2001:db8:2::12/128", &["av-edge-external"]),
            ("198.18.2.11/32", &["webconf-edge-external"]),
        ],
        true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let to: Vec<String> = chain_body(&text, "to_profile")
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        to,
        [
            "ip daddr 198.18.2.10/32 goto to_p1",
            "ip6 daddr 2001:db8:2::12/128 goto to_p3",
            "ip daddr 198.18.2.11/32 goto to_p4",
            "ip daddr 198.18.2.0/24 goto to_p0",
            "ip6 daddr 2001:db8:2::/64 goto to_p2",
        ],
        "destination side, most specific first, in:\n{text}"
    );
    let from = chain_body(&text, "from_profile");
    assert!(
        from.contains("ip saddr 198.18.2.11/32 goto from_p4\n"),
        "{from}"
    );
    // webconf-edge-external has no outbound rows: its source chain is empty,
    // and still ends the source side (edge-internal's 5061 must not apply).
    assert_eq!(
        chain_body(&text, "from_p4").lines().count(),
        1,
        "from_p4 holds no rule in:\n{text}"
    );
    assert!(
        chain_body(&text, "from_p0").contains("jump out_edge_internal"),
        "{text}"
    );
    assert!(
        chain_body(&text, "to_p1").contains("jump role_access_edge_external"),
        "{text}"
    );
    let forward = chain_body(&text, "forward");
    assert!(
        forward.contains("type filter hook forward priority filter; policy drop;"),
        "{forward}"
    );
    assert!(
        forward.contains("ct state established,related counter accept"),
        "{forward}"
    );
    assert!(
        forward.contains("udp sport 67 udp dport 68 counter accept"),
        "{forward}"
    );
    // The lockout guard is the box's own: never on forwarded packets.
    assert!(!forward.contains("dport 22"), "{forward}");
    let input = chain_body(&text, "input");
    assert!(input.contains("meta nfproto ipv4 tcp dport 22"), "{input}");
    assert!(
        !input.contains("jump role_"),
        "no --role: the essentials and the guard only, in:\n{input}"
    );
    assert!(input.contains("jump from_profile"), "{input}");
    assert!(!text.contains("hook output"), "no own roles: {text}");
}

#[test]
fn nft_appliance_own_roles_go_to_input_and_output_only() {
    let text = nft(with_profiles(
        Placement::Appliance,
        &["reverse-proxy-external", "reverse-proxy-internal"],
        &[("198.18.2.12/32", &["av-edge-external"])],
        false,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let input = chain_body(&text, "input");
    assert!(
        input.contains("jump role_reverse_proxy_external")
            && input.contains("jump role_reverse_proxy_internal")
            && !input.contains("role_av_edge_external"),
        "{input}"
    );
    let output = chain_body(&text, "output");
    assert!(
        output.contains("jump out_reverse_proxy_internal")
            && !output.contains("out_av_edge_external"),
        "{output}"
    );
    assert!(
        !chain_body(&text, "forward").contains("reverse_proxy"),
        "{text}"
    );
}

#[test]
fn nft_appliance_whole_family_and_mapped_prefixes() {
    // The XDP trie keys IPv4 as IPv4-mapped IPv6: ::/0 covers both families,
    // and sorts after every IPv4 prefix.
    let text = nft(with_profiles(
        Placement::Appliance,
        &[],
        &[
            ("::/0", &["edge-internal"]),
            ("0.0.0.0/0", &["reverse-proxy-external"]),
        ],
        false,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let to: Vec<String> = chain_body(&text, "to_profile")
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        to,
        [
            "meta nfproto ipv4 goto to_p1",
            "meta nfproto ipv6 goto to_p0",
            "meta nfproto ipv4 goto to_p0",
        ],
        "in:\n{text}"
    );
}

#[test]
fn nft_appliance_refuses_a_prefix_given_twice() {
    let err = nft(with_profiles(
        Placement::Appliance,
        &[],
        &[
            ("198.18.2.0/24", &["edge-internal"]),
            ("198.18.2.7/24", &["av-edge-external"]),
        ],
        false,
    ))
    .expect_err("a prefix given twice was accepted");
    let text = err.to_string();
    assert!(
        text.contains("--profile") && text.contains("198.18.2.0/24 is given twice"),
        "{text}"
    );
    let unknown = nft(with_profiles(
        Placement::Appliance,
        &[],
        &[("198.18.2.0/24", &["no-such-role"])],
        false,
    ))
    .expect_err("an unknown role was accepted");
    assert!(unknown.to_string().contains("no-such-role"), "{unknown}");
}

#[test]
fn nft_host_profiles_pick_the_destination_profile_then_the_default() {
    let text = nft(with_profiles(
        Placement::Host,
        &["front-end"],
        &[
            ("198.18.2.0/24", &["edge-internal"]),
            ("198.18.2.10/32", &["director"]),
        ],
        true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let to: Vec<String> = chain_body(&text, "to_profile")
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        to,
        [
            "ip daddr 198.18.2.10/32 goto to_p1",
            "ip daddr 198.18.2.0/24 goto to_p0",
            "jump role_front_end",
            "jump role_all_servers",
            "jump role_all_internal_servers",
        ],
        "the default profile only after every prefix, in:\n{text}"
    );
    assert!(!text.contains("hook forward"), "{text}");
    assert!(!text.contains("from_profile"), "{text}");
    let input = chain_body(&text, "input");
    assert!(
        input.contains("meta nfproto ipv4 tcp dport 22")
            && input.ends_with("jump to_profile comment \"destination profile\""),
        "{input}"
    );
    // Without --role, addresses in no profile get nothing past the guard.
    let bare = nft(with_profiles(
        Placement::Host,
        &[],
        &[("198.18.2.10/32", &["director"])],
        false,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        chain_body(&bare, "to_profile").lines().count(),
        2,
        "one goto, no default, in:\n{bare}"
    );
}
