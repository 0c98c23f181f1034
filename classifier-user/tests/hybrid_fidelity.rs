//! The hybrid roles and the `microsoft-365` set say what Microsoft's hybrid
//! port table and Microsoft 365 endpoints table say. The tables are read
//! from `tests/data/m365-tables.md`, a transcription of the documents (not of
//! the catalog); the set's file is `catalog/microsoft-365.txt`.

mod fidelity;

use std::collections::BTreeMap;

use portguard::catalog::{
    Catalog, Cidr, Direction, Edition, EffectiveRule, HYBRID_DOCUMENT, M365_ENDPOINTS_DOCUMENT,
    Protocol, SeedTable,
};

use fidelity::{Key, key_of, ports, protocol};

const TABLES: &str = include_str!("../../tests/data/m365-tables.md");
const SET_FILE: &str = include_str!("../../catalog/microsoft-365.txt");
const SET: &str = "microsoft-365";

/// The rows of the table under `**title**` in the section of `document`:
/// cells with `<br/>`, `**` and padding removed; header and separator dropped.
fn table(document: &str, title: &str) -> Vec<Vec<String>> {
    let section = TABLES
        .split("\n## ")
        .find(|s| s.starts_with(document))
        .unwrap_or_else(|| panic!("no section for {document} in m365-tables.md"));
    let bold = format!("**{title}**");
    let rows: Vec<Vec<String>> = section
        .lines()
        .skip_while(|l| l.trim() != bold)
        .skip(1)
        .skip_while(|l| !l.contains('|'))
        .take_while(|l| l.contains('|'))
        .map(|l| {
            l.trim()
                .trim_start_matches('|')
                .trim_end_matches('|')
                .split('|')
                .map(|c| {
                    c.replace("<br/>", " ")
                        .replace("**", "")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "table {title} of {document} has no rows");
    rows.into_iter().skip(2).collect()
}

/// The hybrid port table's rows as rules: the Edge side is the role, the row
/// outbound when the Edge is the source; "443, 50000-59999" is two rules.
fn hybrid_rows() -> Vec<Key> {
    let role = |cell: &str| match cell {
        "Access Edge" => "hybrid-access-edge-external",
        "A/V Edge" => "hybrid-av-edge-external",
        other => panic!("`{other}` is no Edge service"),
    };
    let mut out = Vec::new();
    for row in table(HYBRID_DOCUMENT, "Port and protocol requirements") {
        let (src, dst) = (row[2].as_str(), row[3].as_str());
        let (own, direction) = match (src, dst) {
            (edge, "Office 365") => (role(edge), Direction::Outbound),
            ("Office 365", edge) => (role(edge), Direction::Inbound),
            _ => panic!("a row between {src} and {dst}: one side is Office 365"),
        };
        for cell in row[5].split(',') {
            let (start, end) = ports(cell);
            out.push(Key {
                role: own.to_string(),
                direction,
                protocol: protocol(&row[1]),
                start,
                end,
            });
        }
    }
    out
}

/// "**UDP:** 3478, 3479, 3480, 3481" as (protocol, port) pairs.
fn endpoint_ports(cell: &str) -> Vec<(Protocol, u16)> {
    let mut out = Vec::new();
    let mut current = None;
    for token in cell.split([' ', ',']).filter(|t| !t.is_empty()) {
        match token {
            "TCP:" => current = Some(Protocol::Tcp),
            "UDP:" => current = Some(Protocol::Udp),
            port => {
                let p = current.unwrap_or_else(|| panic!("a port before TCP:/UDP: in `{cell}`"));
                out.push((
                    p,
                    port.parse()
                        .unwrap_or_else(|e| panic!("port `{port}` in `{cell}`: {e}")),
                ));
            }
        }
    }
    out
}

/// An endpoints table row: its ID, the IP ranges it lists, its ports.
type EndpointRow = (u32, Vec<Cidr>, Vec<(Protocol, u16)>);

fn endpoint_rows() -> Vec<EndpointRow> {
    table(
        "microsoft-365/includes/office-365-worldwide-endpoints.md",
        "Skype for Business Online and Microsoft Teams",
    )
    .into_iter()
    .map(|row| {
        let id: u32 = row[0]
            .parse()
            .unwrap_or_else(|e| panic!("ID `{}`: {e}", row[0]));
        // Names and ranges are backquoted groups; a group of CIDRs has a `/`.
        let cidrs: Vec<Cidr> = row[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|group| group.contains('/'))
            .flat_map(|group| group.split(", "))
            .map(|c| Cidr::parse(c).unwrap_or_else(|e| panic!("ID {id}: {e}")))
            .collect();
        (id, cidrs, endpoint_ports(&row[4]))
    })
    .collect()
}

fn rules_of_table(c: &Catalog, table: SeedTable) -> Vec<EffectiveRule> {
    c.role_ids()
        .into_iter()
        .flat_map(|id| c.own_rules(id))
        .filter(|r| r.table == table)
        .collect()
}

fn sorted(mut keys: Vec<Key>) -> Vec<Key> {
    keys.sort();
    keys
}

#[test]
fn the_tables_have_the_rows_we_expect() {
    assert_eq!(hybrid_rows().len(), 7, "6 rows, one with two port ranges");
    let rows = endpoint_rows();
    assert_eq!(rows.len(), 13, "rows of the Skype and Teams section");
    let with_ranges: Vec<u32> = rows
        .iter()
        .filter(|(_, c, _)| !c.is_empty())
        .map(|(id, _, _)| *id)
        .collect();
    assert_eq!(
        with_ranges,
        [11, 12, 13, 22],
        "the rows that list IP ranges"
    );
}

#[test]
fn every_hybrid_row_is_a_rule_and_every_hybrid_rule_a_row() {
    for edition in Edition::ALL {
        let c = Catalog::edition(edition);
        let rules = rules_of_table(&c, SeedTable::Hybrid);
        assert_eq!(
            sorted(rules.iter().map(key_of).collect()),
            sorted(hybrid_rows()),
            "{edition}: the hybrid roles' rules are the hybrid port table's rows"
        );
        for r in &rules {
            assert_eq!(r.table.document(), HYBRID_DOCUMENT);
        }
    }
}

/// IDs 11 and 12 are `hybrid-client`'s rules (outbound, to Microsoft 365);
/// 13 and 22 add only TCP 443 to ranges 12 lists.
#[test]
fn the_endpoint_rows_with_ranges_are_the_client_rules() {
    let rows = endpoint_rows();
    let ports_of = |id: u32| {
        rows.iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, c, p)| (c.clone(), p.clone()))
            .unwrap_or_else(|| panic!("no row {id}"))
    };
    let mut want: Vec<Key> = Vec::new();
    let (_, ports11) = ports_of(11);
    let (lo, hi) = (
        ports11.iter().map(|p| p.1).min().unwrap_or_default(),
        ports11.iter().map(|p| p.1).max().unwrap_or_default(),
    );
    assert_eq!(
        usize::from(hi - lo) + 1,
        ports11.len(),
        "ID 11's ports are one run"
    );
    want.push(Key {
        role: "hybrid-client".into(),
        direction: Direction::Outbound,
        protocol: ports11[0].0,
        start: lo,
        end: hi,
    });
    let (ranges12, ports12) = ports_of(12);
    for (protocol, port) in &ports12 {
        want.push(Key {
            role: "hybrid-client".into(),
            direction: Direction::Outbound,
            protocol: *protocol,
            start: *port,
            end: *port,
        });
    }
    for id in [13, 22] {
        let (ranges, ports) = ports_of(id);
        assert_eq!(ranges, ranges12, "ID {id} lists ID 12's ranges");
        assert!(
            ports.iter().all(|p| ports12.contains(p)),
            "ID {id}'s ports are among ID 12's"
        );
    }
    let c = Catalog::embedded();
    let rules = rules_of_table(&c, SeedTable::M365Endpoints);
    assert_eq!(
        sorted(rules.iter().map(key_of).collect()),
        sorted(want),
        "hybrid-client's rules"
    );
    for r in &rules {
        assert_eq!(r.table.document(), M365_ENDPOINTS_DOCUMENT);
    }
}

#[test]
fn every_hybrid_rule_names_the_microsoft_365_set() {
    let c = Catalog::embedded();
    for table in [SeedTable::Hybrid, SeedTable::M365Endpoints] {
        for r in rules_of_table(&c, table) {
            assert_eq!(
                r.peers,
                [SET],
                "line {}: {} {} names the {SET} set",
                r.line,
                r.role,
                r.service
            );
        }
    }
    let named: Vec<String> = c
        .rules
        .iter()
        .filter(|r| r.peers.iter().any(|p| p == SET))
        .map(|r| r.role.clone())
        .collect();
    assert!(
        named.iter().all(|r| r.starts_with("hybrid-")),
        "only hybrid rules name {SET}: {named:?}"
    );
}

/// The set is the union of the ranges the endpoints table lists, and the
/// catalog's inline copy is the file.
#[test]
fn the_set_is_the_endpoints_ranges_and_the_file() {
    let mut published: Vec<Cidr> = endpoint_rows()
        .into_iter()
        .flat_map(|(_, c, _)| c)
        .collect();
    published.sort();
    published.dedup();
    let mut file: Vec<Cidr> = SET_FILE
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| Cidr::parse(l).expect("microsoft-365.txt"))
        .collect();
    file.sort();
    assert_eq!(file, published, "microsoft-365.txt is the published ranges");
    assert!(
        SET_FILE.contains("Worldwide endpoints version 2023073100")
            && TABLES.contains("Worldwide endpoints version 2023073100"),
        "the file and the transcription name the same version"
    );
    let v4 = file.iter().filter(|c| c.addr.is_ipv4()).count();
    assert!(v4 > 0 && v4 < file.len(), "IPv4 and IPv6 ranges");
    for edition in Edition::ALL {
        let c = Catalog::edition(edition);
        let set = c
            .addresses
            .iter()
            .find(|s| s.id == SET)
            .unwrap_or_else(|| panic!("{edition} has no {SET} set"));
        assert_eq!(
            set.cidrs, file,
            "{edition}: the catalog's {SET} is the file"
        );
    }
}

#[test]
fn hybrid_edge_external_is_both_services() {
    let c = Catalog::embedded();
    let mut both: Vec<Key> = c
        .effective_rules(&["hybrid-edge-external".to_string()])
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(key_of)
        .map(|mut k| {
            k.role.clear();
            k
        })
        .collect();
    let mut two: Vec<Key> = ["hybrid-access-edge-external", "hybrid-av-edge-external"]
        .iter()
        .flat_map(|id| c.own_rules(id))
        .map(|r| key_of(&r))
        .map(|mut k| {
            k.role.clear();
            k
        })
        .collect();
    both.sort();
    two.sort();
    assert_eq!(both, two);
    let count: BTreeMap<Direction, usize> = both.iter().fold(BTreeMap::new(), |mut m, k| {
        *m.entry(k.direction).or_insert(0) += 1;
        m
    });
    assert_eq!(count.get(&Direction::Inbound), Some(&3), "{both:?}");
    assert_eq!(count.get(&Direction::Outbound), Some(&4), "{both:?}");
}
