//! The embedded catalog says what Microsoft's "Port and protocol requirements
//! for servers" (Skype for Business Server 2015, zh-CN edition; called the
//! seed here) says: every row of its port tables is a rule, every rule from
//! those tables is a row, and the IPsec table is whole. The tables are read
//! from `tests/data/seed-tables.md`, a verbatim copy. The 2019 edition holds
//! every row but those of the server role 2019 removed
//! (`tests/data/editions.md`). The Edge and reverse proxy rows have their own
//! test, `edge_fidelity.rs`.

use std::collections::BTreeSet;

use portguard::catalog::{
    Catalog, Edition, EffectiveRule, MatchSide, Protocol, SERVER_PORTS_DOCUMENT, SeedTable,
};

const SEED_TABLES: &str = include_str!("../../tests/data/seed-tables.md");
const EDITIONS: &str = include_str!("../../tests/data/editions.md");

/// The role table (docs/catalog.md): seed label → role id, per seed table.
const ROLE_LABELS: [(SeedTable, &str, &str); 17] = [
    (SeedTable::Server, "所有服务器", "all-servers"),
    (SeedTable::Server, "前端服务器", "front-end"),
    (
        SeedTable::Server,
        "也运行并置中介服务器的前端服务器",
        "front-end-mediation",
    ),
    (
        SeedTable::Server,
        "前端服务器所在中央管理存储",
        "front-end-cms",
    ),
    (SeedTable::Server, "所有内部服务器", "all-internal-servers"),
    (
        SeedTable::Server,
        "Office Web Apps Servers",
        "office-web-apps",
    ),
    (SeedTable::Server, "控制器", "director"),
    (SeedTable::Server, "中介服务器", "mediation"),
    (SeedTable::Server, "持久聊天前端服务器", "persistent-chat"),
    (SeedTable::Hlb, "前端服务器负载平衡器", "lb-front-end"),
    (
        SeedTable::Hlb,
        "前端服务器负载平衡器（如果池也运行中介服务器）",
        "lb-front-end-mediation",
    ),
    (SeedTable::Hlb, "中介服务器负载平衡器", "lb-mediation"),
    (SeedTable::Hlb, "控制器负载平衡器", "lb-director"),
    (SeedTable::DnsLb, "前端服务器负载平衡器", "lb-dns-front-end"),
    (SeedTable::DnsLb, "控制器负载平衡器", "lb-dns-director"),
    (SeedTable::Client, "客户端", "client"),
    // "the listed IP phones": the label cell lists eight phones; matched by its first.
    (SeedTable::Client, "Aastra 6721ip", "ip-phone"),
];

/// The seed's IPsec rule names and the catalog's English names.
const IPSEC_NAMES: [(&str, &str); 15] = [
    ("A/V 边缘服务器内部入站", "A/V Edge Server internal inbound"),
    ("A/V 边缘服务器外部入站", "A/V Edge Server external inbound"),
    (
        "A/V 边缘服务器内部出站",
        "A/V Edge Server internal outbound",
    ),
    (
        "A/V 边缘服务器外部出站",
        "A/V Edge Server external outbound",
    ),
    ("中介服务器入站", "Mediation Server inbound"),
    ("中介服务器出站", "Mediation Server outbound"),
    ("会议助理入站", "Conferencing Attendant inbound"),
    ("会议助理出站", "Conferencing Attendant outbound"),
    ("A/V 会议入站", "A/V Conferencing inbound"),
    ("A/V 会议出站", "A/V Conferencing outbound"),
    ("Exchange 入站", "Exchange inbound"),
    (
        "应用程序共享服务器入站",
        "Application Sharing Servers inbound",
    ),
    (
        "应用程序共享服务器出站",
        "Application Sharing Server outbound",
    ),
    ("Exchange 出站", "Exchange outbound"),
    ("客户端", "Clients"),
];

/// A markdown table under a bold title: rows of trimmed cells, header and separator dropped.
fn table(title: &str) -> Vec<Vec<String>> {
    let bold = format!("**{title}**");
    let mut lines = SEED_TABLES.lines().skip_while(|l| l.trim() != bold);
    assert!(
        lines.next().is_some(),
        "no table titled {title} in tests/data/seed-tables.md"
    );
    let rows: Vec<Vec<String>> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect();
    assert!(rows.len() > 2, "table {title} has no rows");
    assert!(
        rows[1].iter().all(|c| c.starts_with(":-")),
        "separator row of {title}: {:?}",
        rows[1]
    );
    rows.into_iter().skip(2).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeedRow {
    role: &'static str,
    table: SeedTable,
    protocol: Protocol,
    start: u16,
    end: u16,
    media: bool,
}

fn role_of(table: SeedTable, label: &str) -> &'static str {
    let label = label.trim();
    ROLE_LABELS
        .iter()
        .find(|(t, l, _)| {
            *t == table && (label == *l || (*l == "Aastra 6721ip" && label.starts_with(l)))
        })
        .map(|(_, _, id)| *id)
        .unwrap_or_else(|| {
            panic!(
                "seed label `{label}` of table {table} is not in the role table of docs/catalog.md"
            )
        })
}

/// The protocol words of docs/catalog.md. The Office Web Apps row's protocol is empty in
/// the seed: it is HTTPS on 443, so tcp (the catalog's note says so).
fn protocols(word: &str) -> Vec<Protocol> {
    let w = word.trim();
    if w.contains("TCP/UDP") {
        vec![Protocol::Tcp, Protocol::Udp]
    } else if w.starts_with("UDP") || w == "DHCP" {
        vec![Protocol::Udp]
    } else if w.is_empty()
        || ["TCP", "TLS", "HTTP", "PSOM", "SMB", "DCOM", "RPC"]
            .iter()
            .any(|k| w.contains(k))
    {
        vec![Protocol::Tcp]
    } else {
        panic!("protocol word `{w}` has no mapping")
    }
}

/// "端口 4443" → 4443, "1024-65535\*" → the range (a media row), "67/68" → 67 and 68.
fn ports(cell: &str) -> (Vec<(u16, u16)>, bool) {
    let media = cell.contains("\\*");
    let c = cell.replace("端口 ", "").replace("\\*", "");
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .unwrap_or_else(|e| panic!("port `{s}` of `{cell}`: {e}"))
    };
    let ranges = if let Some((a, b)) = c.split_once('/') {
        vec![(parse(a), parse(a)), (parse(b), parse(b))]
    } else if let Some((a, b)) = c.split_once('-') {
        vec![(parse(a), parse(b))]
    } else {
        vec![(parse(&c), parse(&c))]
    };
    (ranges, media)
}

fn seed_rows() -> Vec<SeedRow> {
    // (title, seed table, label column, port column, protocol column)
    let tables = [
        (
            "所需服务器端口（根据服务器角色）",
            SeedTable::Server,
            0,
            2,
            3,
        ),
        (
            "仅使用硬件负载平衡时的硬件负载平衡器端口",
            SeedTable::Hlb,
            0,
            1,
            2,
        ),
        (
            "使用 DNS 负载平衡时的硬件负载平衡器端口",
            SeedTable::DnsLb,
            0,
            1,
            2,
        ),
        ("所需客户端端口", SeedTable::Client, 0, 1, 2),
    ];
    let mut out = Vec::new();
    for (title, seed_table, label, port, proto) in tables {
        for row in table(title) {
            let role = role_of(seed_table, &row[label]);
            let (ranges, media) = ports(&row[port]);
            for (start, end) in ranges {
                for protocol in protocols(&row[proto]) {
                    out.push(SeedRow {
                        role,
                        table: seed_table,
                        protocol,
                        start,
                        end,
                        media,
                    });
                }
            }
        }
    }
    out
}

/// Each role's own rules (out of its resolved set) from the seed's tables, as seed rows.
fn catalog_rows(c: &Catalog) -> Vec<(EffectiveRule, SeedRow)> {
    let mut out = Vec::new();
    for id in c.role_ids() {
        let rules = c
            .effective_rules(&[id.to_string()])
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        for r in rules
            .into_iter()
            .filter(|r| r.role == id && r.table.document() == SERVER_PORTS_DOCUMENT)
        {
            let role = ROLE_LABELS
                .iter()
                .map(|(_, _, rid)| *rid)
                .find(|rid| *rid == r.role)
                .unwrap_or_else(|| {
                    panic!(
                        "catalog role {} has rules from the server ports document's tables but is not in docs/catalog.md's role table",
                        r.role
                    )
                });
            let row = SeedRow {
                role,
                table: r.table,
                protocol: r.protocol,
                start: r.port_start,
                end: r.port_end,
                media: r.media,
            };
            out.push((r, row));
        }
    }
    out
}

#[test]
fn the_seed_has_the_rows_we_expect() {
    assert_eq!(table("所需服务器端口（根据服务器角色）").len(), 53);
    assert_eq!(table("仅使用硬件负载平衡时的硬件负载平衡器端口").len(), 20);
    assert_eq!(table("使用 DNS 负载平衡时的硬件负载平衡器端口").len(), 6);
    assert_eq!(table("所需客户端端口").len(), 12);
    // Two TCP/UDP server rows, two 67/68 rows, two TCP/UDP client media rows count twice.
    assert_eq!(
        seed_rows().len(),
        53 + 2 + 20 + 6 + 12 + 2 + 2,
        "rows after splitting"
    );
}

#[test]
fn every_seed_row_is_a_catalog_rule() {
    let c = Catalog::embedded();
    let have: BTreeSet<SeedRow> = catalog_rows(&c).into_iter().map(|(_, r)| r).collect();
    let missing: Vec<SeedRow> = seed_rows()
        .into_iter()
        .filter(|r| !have.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "seed rows without a catalog rule:\n{missing:#?}"
    );
}

/// The server roles `editions.md` says 2019 removed, as role ids: the
/// heading of each section whose quote says "This server role is removed".
fn roles_removed_in_2019() -> Vec<&'static str> {
    EDITIONS
        .split("\n### ")
        .skip(1)
        .filter(|section| section.contains("This server role is removed"))
        .map(|section| {
            let heading = section.lines().next().unwrap_or_default();
            match heading {
                "Persistent Chat for Skype for Business Server" => "persistent-chat",
                other => {
                    panic!("editions.md removes a server role this test does not know: {other}")
                }
            }
        })
        .collect()
}

/// The 2019 edition: every seed row but those of the removed role, and no
/// other rule; the removed role is gone.
#[test]
fn the_2019_edition_is_the_seed_without_the_removed_role() {
    let removed = roles_removed_in_2019();
    assert_eq!(removed, ["persistent-chat"], "the removed server roles");
    let c = Catalog::edition(Edition::Sfb2019);
    for id in &removed {
        assert!(c.role(id).is_none(), "2019 has no role {id}");
    }
    let want: BTreeSet<SeedRow> = seed_rows()
        .into_iter()
        .filter(|r| !removed.contains(&r.role))
        .collect();
    let have: BTreeSet<SeedRow> = catalog_rows(&c).into_iter().map(|(_, r)| r).collect();
    let missing: Vec<&SeedRow> = want.difference(&have).collect();
    let extra: Vec<&SeedRow> = have.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "2019: seed rows without a rule: {missing:#?}\nrules the seed (without {removed:?}) does not list: {extra:#?}"
    );
    assert!(
        seed_rows().iter().any(|r| r.role == "persistent-chat"),
        "the 2015 seed lists Persistent Chat rows"
    );
}

#[test]
fn every_catalog_rule_is_a_seed_row() {
    let c = Catalog::embedded();
    let seed: BTreeSet<SeedRow> = seed_rows().into_iter().collect();
    let extra: Vec<String> = catalog_rows(&c)
        .into_iter()
        .filter(|(_, row)| !seed.contains(row))
        .map(|(r, row)| format!("line {}: {row:?} ({})", r.line, r.service))
        .collect();
    assert!(
        extra.is_empty(),
        "catalog rules the seed does not list:\n{}",
        extra.join("\n")
    );
}

#[test]
fn dhcp_67_is_the_peers_port() {
    let c = Catalog::embedded();
    for (r, row) in catalog_rows(&c) {
        let expected = if row.table == SeedTable::Client && row.start == 67 && row.end == 67 {
            MatchSide::Source
        } else {
            MatchSide::Destination
        };
        assert_eq!(
            r.side,
            expected,
            "line {}: {} {} {}",
            r.line,
            r.role,
            r.protocol,
            r.ports_text()
        );
    }
}

#[test]
fn role_labels_are_the_seeds() {
    let c = Catalog::embedded();
    for (table, label, id) in ROLE_LABELS {
        let def = c
            .role(id)
            .unwrap_or_else(|| panic!("catalog has no role {id}"));
        assert_eq!(def.table, table, "{id}'s table");
        if id == "ip-phone" {
            assert_eq!(
                def.label,
                phones_cell(),
                "ip-phone's label lists the seed's phones"
            );
        } else {
            assert_eq!(def.label, label, "{id}'s label");
        }
    }
}

/// The phones cell, its `<br/>` separators written as " / ".
fn phones_cell() -> String {
    let row = table("所需客户端端口")
        .into_iter()
        .find(|r| r[0].starts_with("Aastra"))
        .expect("no phones row in the client table");
    row[0]
        .split("<br/>")
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" / ")
}

#[test]
fn ipsec_table_is_whole() {
    let c = Catalog::embedded();
    let rows = table("建议采用的 IPsec 例外");
    assert_eq!(rows.len(), 15);
    assert_eq!(
        c.ipsec.len(),
        rows.len(),
        "same number of IPsec exceptions as the seed"
    );
    for (i, (row, ours)) in rows.iter().zip(&c.ipsec).enumerate() {
        let english = IPSEC_NAMES
            .iter()
            .find(|(zh, _)| *zh == row[0])
            .map(|(_, en)| *en)
            .unwrap_or_else(|| {
                panic!(
                    "seed IPsec rule `{}` has no English name in this test",
                    row[0]
                )
            });
        assert_eq!(ours.name, english, "IPsec row {i}");
        let protocol = match row[3].as_str() {
            "UDP 和 TCP" | "UDP &amp; TCP" => "UDP and TCP",
            "TCP" => "TCP",
            "UDP" => "UDP",
            other => panic!("IPsec protocol `{other}` has no mapping"),
        };
        assert_eq!(
            ours.protocol, protocol,
            "IPsec row {i} ({english}) protocol"
        );
        assert_eq!(ours.authentication, "Do not authenticate", "IPsec row {i}");
        let any = |s: &str| s == "任意" || s == "任何";
        assert_eq!(
            any(&row[1]),
            ours.source == "Any",
            "IPsec row {i} source `{}` vs `{}`",
            row[1],
            ours.source
        );
        assert_eq!(
            any(&row[2]),
            ours.destination == "Any",
            "IPsec row {i} destination `{}`",
            row[2]
        );
        assert_eq!(
            any(&row[4]),
            ours.source_ports == "Any",
            "IPsec row {i} source ports `{}`",
            row[4]
        );
        assert_eq!(
            any(&row[5]),
            ours.destination_ports == "Any",
            "IPsec row {i} destination ports"
        );
    }
}
