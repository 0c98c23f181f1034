//! Address sets and `peers`: parsing, places of errors, files beside the
//! catalog, `--addresses`, and hostile sets.

use std::{net::IpAddr, path::PathBuf};

use super::{AddressesArg, Catalog, CatalogError, Cidr, Diagnostic, SetSource, Severity};

/// One role `a`; lines 1-6.
const BASE: &str = r#"version = 1

[[role]]
id = "a"
label = "A"
table = "edge-internal"
"#;

fn rule(ports: &str, peers: &str) -> String {
    format!(
        "\n[[rule]]\nrole = \"a\"\nservice = \"S{ports}\"\nprotocol = \"tcp\"\nports = \"{ports}\"\n\
         transport = \"TCP\"\ntable = \"edge-internal\"\nnote = \"n\"\n{peers}\n"
    )
}

fn set(id: &str, body: &str) -> String {
    format!("\n[[addresses]]\nid = \"{id}\"\n{body}\n")
}

fn line_of(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "`{needle}` once in the text, found {hits:?}");
    hits[0]
}

fn parse_ok_at(text: &str, origin: &str) -> (Catalog, Vec<Diagnostic>) {
    Catalog::parse(text, origin).expect("expected the catalog to parse")
}

fn errors_at(text: &str, origin: &str) -> Vec<Diagnostic> {
    match Catalog::parse(text, origin) {
        Ok(_) => panic!("expected errors, the catalog parsed:\n{text}"),
        Err(CatalogError { diagnostics }) => diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

fn one_error(text: &str, line: usize, contains: &str) -> Diagnostic {
    let errors = errors_at(text, "t.toml");
    assert_eq!(errors.len(), 1, "one error expected: {errors:#?}");
    let d = errors.into_iter().next().unwrap_or_else(|| unreachable!());
    assert_eq!(
        (d.origin.as_str(), d.line),
        ("t.toml", line),
        "error `{}` at {}:{}, expected t.toml:{line}",
        d.message,
        d.origin,
        d.line
    );
    assert!(
        d.message.contains(contains),
        "`{}` should say `{contains}`",
        d.message
    );
    d
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A directory of its own under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "portguard-sets-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn inline_sets_of_both_families_reach_the_effective_rules() {
    let text = format!(
        "{BASE}{}{}{}",
        set(
            "front-end-pool",
            "cidrs = [\"198.18.1.0/24\", \"2001:db8:1::/48\", \"198.18.1.0/24\"]\nnote = \"FE\""
        ),
        set("director-pool", "cidrs = [\"198.18.2.7\"]"),
        rule("5061", "peers = [\"front-end-pool\", \"director-pool\"]"),
    ) + &rule("5062", "peers = \"front-end-pool\"")
        + &rule("8057", "");
    let (c, warnings) = parse_ok_at(&text, "t.toml");
    assert!(warnings.is_empty(), "no warnings: {warnings:#?}");
    let fe = c
        .address_set("front-end-pool")
        .unwrap_or_else(|| panic!("the set front-end-pool is missing: {:?}", c.addresses));
    assert_eq!(
        fe.cidrs,
        [cidr("198.18.1.0/24"), cidr("2001:db8:1::/48")],
        "sorted, each once"
    );
    assert_eq!(fe.note, "FE");
    assert_eq!(fe.source, SetSource::Catalog);
    let rules = c.own_rules("a");
    let peers: Vec<(u16, Vec<String>)> = rules
        .iter()
        .map(|r| (r.port_start, r.peers.clone()))
        .collect();
    assert_eq!(
        peers,
        [
            (5061, vec!["front-end-pool".into(), "director-pool".into()]),
            (5062, vec!["front-end-pool".into()]),
            (8057, vec![]),
        ]
    );
    assert_eq!(
        c.peer_cidrs(&rules[0].peers),
        [
            cidr("198.18.1.0/24"),
            cidr("198.18.2.7/32"),
            cidr("2001:db8:1::/48")
        ],
        "the union of the sets"
    );
}

#[test]
fn a_bad_cidr_is_an_error_at_its_line() {
    for (bad, says) in [
        ("198.18.1.1/24", "host bits"),
        ("198.18.1.0/33", "prefix length"),
        ("2001:db8::/129", "prefix length"),
        ("2001:db8::/-1", "prefix length"),
        ("front-end", "not an IPv4 or IPv6 address"),
        ("198.18.1.0/", "prefix length"),
    ] {
        let text = format!(
            "{BASE}{}",
            set(
                "s",
                &format!("cidrs = [\n  \"198.18.0.0/24\",\n  \"{bad}\",\n]")
            )
        );
        let d = one_error(&text, line_of(&text, &format!("\"{bad}\"")), says);
        assert!(d.message.contains(bad), "names the CIDR: {d}");
    }
}

#[test]
fn an_unknown_set_in_peers_is_an_error_at_the_rule() {
    let text = format!(
        "{BASE}{}{}",
        set("front-end-pool", "cidrs = [\"198.18.1.0/24\"]"),
        rule("5061", "peers = \"front-end-pol\"")
    );
    let d = one_error(
        &text,
        line_of(&text, "front-end-pol\""),
        "unknown address set",
    );
    assert!(
        d.hint
            .as_deref()
            .is_some_and(|h| h.contains("front-end-pool")),
        "the hint names the known sets: {d}"
    );
}

#[test]
fn bad_set_ids_duplicates_and_bad_peers_values_are_errors() {
    let text = format!("{BASE}{}", set("Front_End", "cidrs = []"));
    one_error(&text, line_of(&text, "Front_End"), "invalid address set id");

    let text = format!(
        "{BASE}{}{}",
        set("s", "cidrs = []"),
        set("s", "cidrs = [\"198.18.0.0/15\"]")
    );
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("id = \"s\""))
        .map(|(i, _)| i + 1)
        .nth(1)
        .unwrap_or_else(|| panic!("two set headers in {text}"));
    one_error(&text, second, "duplicate address set `s`");

    for (value, says) in [
        ("peers = 5", "not a integer"),
        ("peers = []", "non-empty list"),
        ("peers = [1]", "non-empty list"),
    ] {
        let text = format!("{BASE}{}{}", set("s", "cidrs = []"), rule("5061", value));
        one_error(&text, line_of(&text, value), says);
    }

    let text = format!(
        "{BASE}{}{}",
        set("s", "cidrs = [\"198.18.0.0/15\"]"),
        rule("5061", "match = \"source\"\npeers = \"s\"")
    );
    one_error(
        &text,
        line_of(&text, "peers = \"s\""),
        "compiles to nothing",
    );
}

#[test]
fn an_empty_set_warns_at_each_rule_that_names_it() {
    let text = format!(
        "{BASE}{}{}",
        set("federation-partners", "cidrs = []"),
        rule("5061", "peers = \"federation-partners\"")
    );
    let (c, warnings) = parse_ok_at(&text, "t.toml");
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    let w = &warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.line, line_of(&text, "peers = \"federation"), "{w}");
    assert!(w.message.contains("matches nothing"), "{w}");
    assert!(c.peer_cidrs(&c.rules[0].peers).is_empty());
}

#[test]
fn a_file_set_is_read_beside_the_catalog_with_comments() {
    let dir = Scratch::new("file");
    dir.write(
        "partners.txt",
        "# federation partners\n198.18.5.0/24   # contoso\n\n  2001:db8:5::/48\n198.18.5.0/24\n",
    );
    let text = format!(
        "{BASE}{}",
        set(
            "federation-partners",
            "cidrs = [\"198.18.6.1\"]\nfile = \"partners.txt\""
        )
    );
    let origin = dir.0.join("catalog.toml").display().to_string();
    let (c, warnings) = parse_ok_at(&text, &origin);
    assert!(warnings.is_empty(), "{warnings:#?}");
    let set = c
        .address_set("federation-partners")
        .unwrap_or_else(|| panic!("no set: {:?}", c.addresses));
    assert_eq!(
        set.cidrs,
        [
            cidr("198.18.5.0/24"),
            cidr("198.18.6.1/32"),
            cidr("2001:db8:5::/48")
        ],
        "inline and file prefixes, sorted, each once"
    );
    assert_eq!(set.file.as_deref(), Some("partners.txt"));
}

#[test]
fn a_bad_line_in_a_set_file_names_that_file_and_line() {
    let dir = Scratch::new("badfile");
    let file = dir.write(
        "partners.txt",
        "198.18.5.0/24\n# a comment\n198.18.5.1/24\nnonsense\n",
    );
    let text = format!("{BASE}{}", set("p", "file = \"partners.txt\""));
    let origin = dir.0.join("catalog.toml").display().to_string();
    let errors = errors_at(&text, &origin);
    let places: Vec<(String, usize)> = errors.iter().map(|d| (d.origin.clone(), d.line)).collect();
    let f = file.display().to_string();
    assert_eq!(
        places,
        [(f.clone(), 3), (f, 4)],
        "each bad line at the set file's line: {errors:#?}"
    );
    assert!(errors[0].message.contains("host bits"), "{}", errors[0]);
}

#[test]
fn a_missing_or_device_set_file_is_an_error_at_the_file_key() {
    let dir = Scratch::new("missing");
    let origin = dir.0.join("catalog.toml").display().to_string();
    for file in ["nope.txt", "/dev/zero"] {
        let text = format!("{BASE}{}", set("p", &format!("file = \"{file}\"")));
        let errors = errors_at(&text, &origin);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(
            (errors[0].origin.as_str(), errors[0].line),
            (origin.as_str(), line_of(&text, "file = ")),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].message.contains("address set file"),
            "{}",
            errors[0]
        );
    }
}

#[test]
fn too_many_prefixes_are_refused() {
    let cidrs: Vec<String> = (0..=super::sets::MAX_SET_CIDRS)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let text = format!(
        "{BASE}{}",
        set("big", &format!("cidrs = [{}]", cidrs.join(",")))
    );
    let errors = errors_at(&text, "t.toml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].message.contains("prefixes in the address sets"),
        "{}",
        errors[0]
    );
}

#[test]
fn addresses_flag_replaces_a_set_and_warns_when_it_empties_one() {
    let text = format!(
        "{BASE}{}{}",
        set("federation-partners", "cidrs = [\"0.0.0.0/0\", \"::/0\"]"),
        rule("5061", "peers = \"federation-partners\"")
    );
    let (c, _) = parse_ok_at(&text, "t.toml");
    let arg: AddressesArg = "federation-partners=198.18.9.0/24, 2001:db8:9::/48"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let (d, warnings) = c.with_addresses(&[arg]).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:#?}");
    let set = d.address_set("federation-partners").expect("set lost");
    assert_eq!(set.cidrs, [cidr("198.18.9.0/24"), cidr("2001:db8:9::/48")]);
    assert_eq!(set.source, SetSource::Flag);
    let ip: IpAddr = "198.18.9.77".parse().unwrap_or_else(|e| panic!("{e}"));
    assert!(set.cidrs[0].contains(ip));

    let empty: AddressesArg = "federation-partners="
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, warnings) = c.with_addresses(&[empty]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].message.contains("matches nothing") && warnings[0].message.contains("5061"),
        "{}",
        warnings[0]
    );

    let unknown: AddressesArg = "partners=198.18.9.0/24"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let e = match c.with_addresses(&[unknown]) {
        Ok(_) => panic!("an unknown set was accepted"),
        Err(e) => e,
    };
    assert_eq!(e.diagnostics[0].origin, "--addresses");
    assert!(
        e.to_string().contains("unknown address set `partners`"),
        "{e}"
    );

    for bad in ["federation-partners", "=198.18.0.0/15", "p=198.18.0.1/15"] {
        assert!(
            bad.parse::<AddressesArg>().is_err(),
            "`{bad}` was accepted as --addresses"
        );
    }
}
