//! The default catalog's perimeter roles say what Microsoft's Edge Server and
//! reverse proxy tables say: every published row is a rule under its role
//! with its direction, and every perimeter rule is a published row. The
//! tables are read from `tests/data/edge-tables.md`, a transcription of the
//! documents (not of the catalog). The 2019 edition holds every row except
//! those the documents mark as not supported in Skype for Business Server 2019.

mod fidelity;

use std::collections::BTreeMap;

use portguard::catalog::{
    Catalog, Direction, EDGE_DOCUMENT, Edition, EffectiveRule, Protocol, REVERSE_PROXY_DOCUMENT,
    SeedTable,
};

use fidelity::{Key, key_of, ports, protocol};

const EDGE_TABLES: &str = include_str!("../../tests/data/edge-tables.md");

/// How to read one published table, and where its rows go in the catalog.
struct TableSpec {
    /// The bold heading path in `edge-tables.md`.
    title: &'static str,
    document: &'static str,
    /// The catalog table its rows are rules of.
    table: SeedTable,
    /// `Some(title)`: the rows repeat rules of another table for the same
    /// addresses; the catalog keeps one rule, whose note says "Also in <title>".
    also_in: Option<&'static str>,
    kind: Kind,
    rows: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Role or protocol | TCP or UDP | port | source | destination | notes.
    EdgeExternal,
    EdgeInternal,
    VipExternal,
    VipInternal,
    /// Protocol/TCP or UDP/Port | source | destination | notes.
    ReverseProxyExternal,
    ReverseProxyInternal,
}

const HLB_EXTERNAL: &str =
    "Hardware load balancers for Edge port tables: External port firewall summary table";
const HLB_INTERNAL: &str =
    "Hardware load balancers for Edge port tables: Internal port firewall summary table";
/// The VIP table, as the note of a rule it alone gives a service names it.
const VIP_EXTERNAL: &str =
    "Hardware load balancers for Edge port tables: External interface Virtual IPs";
const MAIN_EXTERNAL: &str = "Port and firewall planning > External port firewall summary table";
const VIP_EXTERNAL_TITLE: &str =
    "Hardware load balancers for Edge port tables > External interface Virtual IPs";

const TABLES: [TableSpec; 8] = [
    TableSpec {
        title: MAIN_EXTERNAL,
        document: EDGE_DOCUMENT,
        table: SeedTable::EdgeExternal,
        also_in: None,
        kind: Kind::EdgeExternal,
        rows: 14,
    },
    TableSpec {
        title: "Port and firewall planning > Internal port firewall summary table",
        document: EDGE_DOCUMENT,
        table: SeedTable::EdgeInternal,
        also_in: None,
        kind: Kind::EdgeInternal,
        rows: 11,
    },
    TableSpec {
        title: "Hardware load balancers for Edge port tables > External port firewall summary table",
        document: EDGE_DOCUMENT,
        table: SeedTable::EdgeExternal,
        also_in: Some(HLB_EXTERNAL),
        kind: Kind::EdgeExternal,
        rows: 9,
    },
    TableSpec {
        title: "Hardware load balancers for Edge port tables > Internal port firewall summary table",
        document: EDGE_DOCUMENT,
        table: SeedTable::EdgeInternal,
        also_in: Some(HLB_INTERNAL),
        kind: Kind::EdgeInternal,
        rows: 8,
    },
    TableSpec {
        title: VIP_EXTERNAL_TITLE,
        document: EDGE_DOCUMENT,
        table: SeedTable::EdgeVipExternal,
        also_in: None,
        kind: Kind::VipExternal,
        rows: 8,
    },
    TableSpec {
        title: "Hardware load balancers for Edge port tables > Internal interface Virtual IPs",
        document: EDGE_DOCUMENT,
        table: SeedTable::EdgeVipInternal,
        also_in: None,
        kind: Kind::VipInternal,
        rows: 5,
    },
    TableSpec {
        title: "Port and Protocol Details > Firewall Details for Reverse Proxy Server: External Interface",
        document: REVERSE_PROXY_DOCUMENT,
        table: SeedTable::ReverseProxyExternal,
        also_in: None,
        kind: Kind::ReverseProxyExternal,
        rows: 2,
    },
    TableSpec {
        title: "Port and Protocol Details > Firewall Details for Reverse Proxy Server: Internal Interface",
        document: REVERSE_PROXY_DOCUMENT,
        table: SeedTable::ReverseProxyInternal,
        also_in: None,
        kind: Kind::ReverseProxyInternal,
        rows: 3,
    },
];

/// The cells of `title`'s table (header and separator dropped), `<br/>` and
/// bold markers removed and white space collapsed. The table must sit in the
/// section of its document.
fn table(spec: &TableSpec) -> Vec<Vec<String>> {
    let section = EDGE_TABLES
        .split("\n## ")
        .find(|s| s.starts_with(spec.document))
        .unwrap_or_else(|| panic!("no section for {} in edge-tables.md", spec.document));
    let bold = format!("**{}**", spec.title);
    let mut lines = section.lines().skip_while(|l| l.trim() != bold);
    assert!(
        lines.next().is_some(),
        "no table titled {} under {}",
        spec.title,
        spec.document
    );
    let rows: Vec<Vec<String>> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split('|').map(clean).collect()
        })
        .collect();
    assert!(rows.len() > 2, "table {} has no rows", spec.title);
    assert!(
        rows[1].iter().all(|c| c.starts_with(":-")),
        "separator row of {}: {:?}",
        spec.title,
        rows[1]
    );
    rows.into_iter().skip(2).collect()
}

fn clean(cell: &str) -> String {
    cell.replace("<br/>", " ")
        .replace("**", "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The role whose address `cell` (the row's source or destination) names.
fn role_of(kind: Kind, cell: &str) -> &'static str {
    let service = || {
        if cell.contains("Access Edge service") || cell.contains("XMPP Proxy service") {
            "access-edge-external"
        } else if cell.contains("Web Conferencing Edge service") {
            "webconf-edge-external"
        } else if cell.contains("A/V Edge service") {
            "av-edge-external"
        } else {
            panic!("`{cell}` names no Edge service")
        }
    };
    let expect = |needle: &str, role: &'static str| {
        assert!(cell.contains(needle), "`{cell}` should name {needle}");
        role
    };
    match kind {
        Kind::EdgeExternal => service(),
        Kind::EdgeInternal => expect("Edge Server internal interface", "edge-internal"),
        Kind::VipExternal => {
            // Any of the three services' addresses: they are the VIPs here.
            let _ = service();
            "lb-edge-external"
        }
        Kind::VipInternal => expect("Edge Server internal", "lb-edge-internal"),
        Kind::ReverseProxyExternal => expect("Reverse proxy listener", "reverse-proxy-external"),
        Kind::ReverseProxyInternal => {
            expect("Internal reverse proxy interface", "reverse-proxy-internal")
        }
    }
}

/// The rows of one table as keys: inbound when the source is "Any" (the
/// role's address is the destination), outbound otherwise (it is the source).
fn keys(spec: &TableSpec) -> Vec<Key> {
    keys_as(spec, spec.kind)
}

/// Whether the documents mark the row as gone from Skype for Business
/// Server 2019: the 5269 rows say "Not supported in Skype for Business(s)
/// Server 2019" in their first cell, the 23456 rows "no longer supported in
/// Skype for Business Server 2019" in their note.
fn not_in_2019(row: &[String]) -> bool {
    let text = row.join(" ").to_lowercase();
    text.contains("not supported in skype for business server 2019")
        || text.contains("not supported in skype for businesss server 2019")
        || text.contains("no longer supported in skype for business server 2019")
}

/// Like [`keys`], with the role read as a table of kind `roles` names it.
fn keys_as(spec: &TableSpec, roles: Kind) -> Vec<Key> {
    keys_in(spec, roles, Edition::Sfb2015)
}

/// The rows of `edition` (2019: without those [`not_in_2019`] marks).
fn keys_in(spec: &TableSpec, roles: Kind, edition: Edition) -> Vec<Key> {
    table(spec)
        .into_iter()
        .filter(|row| edition == Edition::Sfb2015 || !not_in_2019(row))
        .map(|row| {
            let (proto, port, src, dst) = match spec.kind {
                Kind::ReverseProxyExternal | Kind::ReverseProxyInternal => {
                    // "HTTPS/TCP/443"
                    let parts: Vec<&str> = row[0].split('/').collect();
                    assert_eq!(parts.len(), 3, "protocol cell `{}`", row[0]);
                    (parts[1].to_string(), parts[2].to_string(), &row[1], &row[2])
                }
                _ => (row[1].clone(), row[2].clone(), &row[3], &row[4]),
            };
            let inbound = src.starts_with("Any");
            if spec.kind != Kind::ReverseProxyInternal {
                assert!(
                    inbound != dst.starts_with("Any"),
                    "{}: exactly one of source `{src}` and destination `{dst}` is Any",
                    spec.title
                );
            }
            let (direction, own) = if inbound {
                (Direction::Inbound, dst)
            } else {
                (Direction::Outbound, src)
            };
            let (start, end) = ports(&port);
            Key {
                role: role_of(roles, own).to_string(),
                direction,
                protocol: protocol(&proto),
                start,
                end,
            }
        })
        .collect()
}

fn spec(title: &str) -> &'static TableSpec {
    TABLES
        .iter()
        .find(|s| s.title == title)
        .unwrap_or_else(|| panic!("no table spec titled {title}"))
}

/// The rows of the "External interface Virtual IPs" table that the main
/// external table does not list for the service whose address they name. The
/// VIP table names that service (the XMPP rows: "XMPP Proxy service (shares an
/// IP address with the Access Edge service)"), and what the VIP forwards the
/// service's own address needs: each is also a rule of the service's role.
fn borrowed_rows() -> Vec<Key> {
    borrowed_rows_in(Edition::Sfb2015)
}

fn borrowed_rows_in(edition: Edition) -> Vec<Key> {
    let main = keys_in(spec(MAIN_EXTERNAL), Kind::EdgeExternal, edition);
    keys_in(spec(VIP_EXTERNAL_TITLE), Kind::EdgeExternal, edition)
        .into_iter()
        .filter(|k| !main.contains(k))
        .collect()
}

/// Every role's own rules from the Edge and reverse-proxy documents.
fn perimeter_rules(c: &Catalog) -> Vec<EffectiveRule> {
    c.role_ids()
        .into_iter()
        .flat_map(|id| c.own_rules(id))
        .filter(|r| [EDGE_DOCUMENT, REVERSE_PROXY_DOCUMENT].contains(&r.table.document()))
        .collect()
}

fn count<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

#[test]
fn the_documents_have_the_rows_we_expect() {
    for spec in &TABLES {
        assert_eq!(table(spec).len(), spec.rows, "rows of {}", spec.title);
        assert_eq!(
            spec.table.document(),
            spec.document,
            "the catalog's table {} is in {}",
            spec.table,
            spec.document
        );
    }
}

/// The tables with `also_in: None` are the rules, one rule per row: the same
/// (role, direction, protocol, ports, table), as often as the documents list it.
#[test]
fn every_published_row_is_a_rule_and_every_perimeter_rule_a_row() {
    rows_are_rules(Edition::Sfb2015);
}

/// The 2019 edition: the same, without the rows the documents say 2019
/// no longer supports.
#[test]
fn every_row_2019_keeps_is_a_rule_of_the_2019_edition_and_no_other() {
    rows_are_rules(Edition::Sfb2019);
    let gone: Vec<Key> = TABLES
        .iter()
        .filter(|s| s.also_in.is_none())
        .flat_map(|s| {
            let all = keys_in(s, s.kind, Edition::Sfb2015);
            let kept = keys_in(s, s.kind, Edition::Sfb2019);
            all.into_iter().filter(move |k| !kept.contains(k))
        })
        .collect();
    let mut ports: Vec<u16> = gone.iter().map(|k| k.start).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports,
        [5269, 23456],
        "the rows the documents drop from 2019 are the XMPP rows: {gone:?}"
    );
}

fn rows_are_rules(edition: Edition) {
    let c = Catalog::edition(edition);
    let published = count(
        TABLES
            .iter()
            .filter(|s| s.also_in.is_none())
            .flat_map(|s| {
                keys_in(s, s.kind, edition)
                    .into_iter()
                    .map(|k| (k, s.table))
            })
            .chain(
                borrowed_rows_in(edition)
                    .into_iter()
                    .map(|k| (k, SeedTable::EdgeExternal)),
            ),
    );
    let rules = count(perimeter_rules(&c).iter().map(|r| (key_of(r), r.table)));
    let missing: Vec<String> = published
        .iter()
        .filter(|(k, n)| rules.get(k).copied().unwrap_or(0) < **n)
        .map(|(k, n)| {
            format!(
                "{k:?}: published {n}x, {}x in the catalog",
                rules.get(k).copied().unwrap_or(0)
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{edition}: published rows without a catalog rule:\n{}",
        missing.join("\n")
    );
    let extra: Vec<String> = rules
        .iter()
        .filter(|(k, n)| published.get(k).copied().unwrap_or(0) < **n)
        .map(|(k, n)| {
            format!(
                "{k:?}: {n}x in the catalog, published {}x",
                published.get(k).copied().unwrap_or(0)
            )
        })
        .collect();
    assert!(
        extra.is_empty(),
        "{edition}: catalog rules no published row lists:\n{}",
        extra.join("\n")
    );
}

/// The hardware-load-balancer summary tables repeat rows for the same
/// addresses: each is the rule of the main table, whose note says so; and a
/// note says so only for rows that table lists.
#[test]
fn rows_repeated_by_the_hlb_summary_tables_are_noted() {
    let c = Catalog::embedded();
    let rules = perimeter_rules(&c);
    for spec in TABLES.iter().filter(|s| s.also_in.is_some()) {
        let title = spec.also_in.unwrap_or_default();
        let mention = format!("Also in \"{title}\".");
        let rows = keys(spec);
        for k in &rows {
            let r = rules
                .iter()
                .find(|r| key_of(r) == *k && r.table == spec.table)
                .unwrap_or_else(|| panic!("{}: no rule for {k:?}", spec.title));
            assert!(
                r.note.contains(&mention),
                "line {}: {k:?} is also in {title}; its note should say `{mention}`: {}",
                r.line,
                r.note
            );
        }
        for r in rules.iter().filter(|r| r.note.contains(&mention)) {
            assert!(
                rows.contains(&key_of(r)),
                "line {}: the note says `{mention}`, which does not list {:?}",
                r.line,
                key_of(r)
            );
        }
    }
}

/// A VIP row the main external table lacks for its service is a rule of that
/// service's role, whose note names the VIP table; a note names it only for
/// such rows.
#[test]
fn vip_rows_the_main_table_lacks_are_rules_of_their_service() {
    let borrowed = borrowed_rows();
    assert_eq!(
        borrowed,
        [Key {
            role: "access-edge-external".to_string(),
            direction: Direction::Outbound,
            protocol: Protocol::Tcp,
            start: 5269,
            end: 5269,
        }],
        "the VIP rows the main external table does not list for their service"
    );
    let c = Catalog::embedded();
    let rules = perimeter_rules(&c);
    let mention = format!("From \"{VIP_EXTERNAL}\"");
    for k in &borrowed {
        let r = rules
            .iter()
            .find(|r| key_of(r) == *k && r.table == SeedTable::EdgeExternal)
            .unwrap_or_else(|| {
                panic!("{VIP_EXTERNAL} lists {k:?}; no rule of the main table has it")
            });
        assert!(
            r.note.contains(&mention),
            "line {}: {k:?} comes from {VIP_EXTERNAL}; its note should say `{mention}`: {}",
            r.line,
            r.note
        );
    }
    for r in rules.iter().filter(|r| r.note.contains(&mention)) {
        assert!(
            borrowed.contains(&key_of(r)),
            "line {}: the note says `{mention}`, but {:?} is not a VIP row the main table lacks",
            r.line,
            key_of(r)
        );
    }
}

/// Where the documents disagree, the catalog follows the 2015 tables (see
/// docs/catalog.md).
#[test]
fn directions_where_the_documents_disagree() {
    let c = Catalog::embedded();
    let rules = perimeter_rules(&c);
    let dirs = |role: &str, protocol: Protocol, port: u16| {
        let mut d: Vec<Direction> = rules
            .iter()
            .filter(|r| r.role == role && r.protocol == protocol && r.port_start == port)
            .map(|r| r.direction)
            .collect();
        d.sort();
        d
    };
    use Direction::{Inbound, Outbound};
    for p in [Protocol::Tcp, Protocol::Udp] {
        assert_eq!(
            dirs("av-edge-external", p, 50000),
            [Outbound],
            "{p}: the media relay range is outbound only (inbound in 2013 only for OCS 2007 federation)"
        );
    }
    assert_eq!(
        dirs("av-edge-external", Protocol::Udp, 3478),
        [Inbound, Outbound]
    );
    assert_eq!(
        dirs("av-edge-external", Protocol::Tcp, 443),
        [Inbound, Outbound]
    );
    assert_eq!(
        dirs("access-edge-external", Protocol::Tcp, 5061),
        [Inbound, Outbound]
    );
    assert_eq!(
        dirs("access-edge-external", Protocol::Tcp, 5269),
        [Inbound, Outbound],
        "XMPP: inbound from the main external table, outbound from the VIP table (server to server, each side connects)"
    );
    assert_eq!(
        dirs("lb-edge-external", Protocol::Tcp, 5269),
        [Inbound, Outbound]
    );
    for r in rules.iter().filter(|r| r.start_is_xmpp()) {
        assert!(
            r.note
                .contains("Not supported in Skype for Business Server 2019"),
            "line {}: XMPP rows say that 2019 dropped XMPP: {}",
            r.line,
            r.note
        );
    }
}

trait Xmpp {
    fn start_is_xmpp(&self) -> bool;
}

impl Xmpp for EffectiveRule {
    fn start_is_xmpp(&self) -> bool {
        self.port_start == 5269 || self.port_start == 23456
    }
}

/// The 2015 system requirements name the reverse proxy's bridging in prose;
/// the 2013 table bridges the same ports.
#[test]
fn reverse_proxy_bridges_the_ports_the_2015_prose_names() {
    let prose: Vec<&str> = EDGE_TABLES
        .lines()
        .filter(|l| l.starts_with("> - should allow bridging"))
        .collect();
    assert_eq!(prose.len(), 2, "the two bridging bullets");
    let c = Catalog::embedded();
    let rules = perimeter_rules(&c);
    let has = |role: &str, direction: Direction, port: u16| {
        rules.iter().any(|r| {
            r.role == role
                && r.direction == direction
                && r.protocol == Protocol::Tcp
                && (r.port_start, r.port_end) == (port, port)
        })
    };
    for line in prose {
        let tcp_ports: Vec<u16> = line
            .split("TCP ")
            .skip(1)
            .filter_map(|s| {
                let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        let [outside, inside] = tcp_ports[..] else {
            panic!("two TCP ports in `{line}`, found {tcp_ports:?}")
        };
        assert!(
            has("reverse-proxy-external", Direction::Inbound, outside),
            "reverse-proxy-external takes TCP {outside} in (`{line}`)"
        );
        assert!(
            has("reverse-proxy-internal", Direction::Outbound, inside),
            "reverse-proxy-internal sends to TCP {inside} (`{line}`)"
        );
    }
}

#[test]
fn perimeter_roles_are_the_contracts() {
    let c = Catalog::embedded();
    let expected = [
        ("access-edge-external", SeedTable::EdgeExternal),
        ("webconf-edge-external", SeedTable::EdgeExternal),
        ("av-edge-external", SeedTable::EdgeExternal),
        ("consolidated-edge-external", SeedTable::EdgeExternal),
        ("edge-internal", SeedTable::EdgeInternal),
        ("lb-edge-external", SeedTable::EdgeVipExternal),
        ("lb-edge-internal", SeedTable::EdgeVipInternal),
        ("reverse-proxy-external", SeedTable::ReverseProxyExternal),
        ("reverse-proxy-internal", SeedTable::ReverseProxyInternal),
    ];
    for (id, table) in expected {
        let def = c
            .role(id)
            .unwrap_or_else(|| panic!("the catalog has no role {id}"));
        assert_eq!(def.table, table, "{id}'s table");
        for r in c.own_rules(id) {
            assert_eq!(
                r.table, table,
                "line {}: {id}'s rule comes from its table",
                r.line
            );
        }
    }
    let mut consolidated: Vec<Key> = c
        .effective_rules(&["consolidated-edge-external".to_string()])
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(key_of)
        .collect();
    let mut three: Vec<Key> = [
        "access-edge-external",
        "webconf-edge-external",
        "av-edge-external",
    ]
    .iter()
    .flat_map(|id| c.own_rules(id))
    .map(|r| key_of(&r))
    .collect();
    consolidated.sort();
    three.sort();
    assert_eq!(
        consolidated, three,
        "consolidated-edge-external is the three services"
    );
}
