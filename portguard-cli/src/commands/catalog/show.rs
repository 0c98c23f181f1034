//! Renderings of the catalog for `portguard catalog show`.

use std::fmt::Write as _;

use serde::Serialize;

use portguard::catalog::{
    AddressSet, Catalog, CatalogError, EffectiveRule, IpsecException, SeedTable, SetSource,
};

/// `--format` of `catalog show`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    Table,
    Csv,
    Md,
    Json,
}

/// `--table` of `catalog show`: the port rules or the IPsec exceptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowTable {
    Rules,
    Ipsec,
    /// The address sets (`[[addresses]]`) and what they hold.
    Addresses,
}

/// The rows `show` prints: `role`'s rules with inclusions resolved, or every
/// role's own rules (in role order) without one.
pub fn rows(catalog: &Catalog, role: Option<&str>) -> Result<Vec<EffectiveRule>, CatalogError> {
    match role {
        Some(r) => catalog.effective_rules(&[r.to_string()]),
        None => Ok(catalog
            .roles
            .iter()
            .flat_map(|r| catalog.own_rules(&r.id))
            .collect()),
    }
}

#[derive(Serialize)]
struct JsonRule<'a> {
    role: &'a str,
    service: &'a str,
    protocol: &'a str,
    port_start: u16,
    port_end: u16,
    transport: &'a str,
    table: &'a str,
    /// The published document the table is in.
    document: &'a str,
    #[serde(rename = "match")]
    side: &'a str,
    direction: &'a str,
    media: bool,
    /// The address sets the peer must be in (empty: any peer).
    peers: &'a [String],
    note: &'a str,
    line: usize,
}

#[derive(Serialize)]
struct JsonSet<'a> {
    id: &'a str,
    cidrs: Vec<String>,
    file: Option<&'a str>,
    /// `catalog` or `flag` (`--addresses`).
    source: &'a str,
    note: &'a str,
}

#[derive(Serialize)]
struct JsonIpsec<'a> {
    name: &'a str,
    source: &'a str,
    destination: &'a str,
    protocol: &'a str,
    source_ports: &'a str,
    destination_ports: &'a str,
    authentication: &'a str,
}

const RULE_HEADER: [&str; 9] = [
    "ROLE",
    "SERVICE",
    "PROTO",
    "PORTS",
    "TRANSPORT",
    "TABLE",
    "MATCH",
    "DIRECTION",
    "PEERS",
];
const CSV_RULE_HEADER: [&str; 11] = [
    "role",
    "service",
    "protocol",
    "port_start",
    "port_end",
    "transport",
    "table",
    "match",
    "direction",
    "note",
    "peers",
];
const IPSEC_TABLE_HEADER: [&str; 7] = [
    "NAME",
    "SOURCE",
    "DESTINATION",
    "PROTOCOL",
    "SOURCE PORTS",
    "DESTINATION PORTS",
    "AUTHENTICATION",
];
const IPSEC_HEADER: [&str; 7] = [
    "name",
    "source",
    "destination",
    "protocol",
    "source_ports",
    "destination_ports",
    "authentication",
];

pub fn render_rules(
    catalog: &Catalog,
    rows: &[EffectiveRule],
    role: Option<&str>,
    format: ShowFormat,
) -> String {
    match format {
        ShowFormat::Table => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.role.clone(),
                        r.service.clone(),
                        r.protocol.to_string(),
                        r.ports_text(),
                        r.transport.clone(),
                        r.table.to_string(),
                        r.side.to_string(),
                        r.direction.to_string(),
                        peers_text(&r.peers),
                    ]
                })
                .collect();
            aligned(&RULE_HEADER, &cells)
        }
        ShowFormat::Csv => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.role.clone(),
                        r.service.clone(),
                        r.protocol.to_string(),
                        r.port_start.to_string(),
                        r.port_end.to_string(),
                        r.transport.clone(),
                        r.table.to_string(),
                        r.side.to_string(),
                        r.direction.to_string(),
                        r.note.clone(),
                        r.peers.join(" "),
                    ]
                })
                .collect();
            csv(&CSV_RULE_HEADER, &cells)
        }
        ShowFormat::Json => {
            let out: Vec<JsonRule<'_>> = rows
                .iter()
                .map(|r| JsonRule {
                    role: &r.role,
                    service: &r.service,
                    protocol: r.protocol.as_str(),
                    port_start: r.port_start,
                    port_end: r.port_end,
                    transport: &r.transport,
                    table: r.table.as_str(),
                    document: r.table.document(),
                    side: r.side.as_str(),
                    direction: r.direction.as_str(),
                    media: r.media,
                    peers: &r.peers,
                    note: &r.note,
                    line: r.line,
                })
                .collect();
            json(&out)
        }
        ShowFormat::Md => markdown_rules(catalog, rows, role),
    }
}

pub fn render_ipsec(catalog: &Catalog, format: ShowFormat) -> String {
    let cells: Vec<Vec<String>> = catalog
        .ipsec
        .iter()
        .map(|e: &IpsecException| {
            vec![
                e.name.clone(),
                e.source.clone(),
                e.destination.clone(),
                e.protocol.clone(),
                e.source_ports.clone(),
                e.destination_ports.clone(),
                e.authentication.clone(),
            ]
        })
        .collect();
    match format {
        ShowFormat::Table => aligned(&IPSEC_TABLE_HEADER, &cells),
        ShowFormat::Csv => csv(&IPSEC_HEADER, &cells),
        ShowFormat::Json => {
            let out: Vec<JsonIpsec<'_>> = catalog
                .ipsec
                .iter()
                .map(|e| JsonIpsec {
                    name: &e.name,
                    source: &e.source,
                    destination: &e.destination,
                    protocol: &e.protocol,
                    source_ports: &e.source_ports,
                    destination_ports: &e.destination_ports,
                    authentication: &e.authentication,
                })
                .collect();
            json(&out)
        }
        ShowFormat::Md => {
            let mut s = format!("# IPsec exceptions: {}\n\n", catalog.origin);
            s.push_str(
                "IPsec must be disabled on the media port ranges, so that IPsec negotiation does not delay \
                 media port allocation.\n\n",
            );
            s.push_str(&md_table(
                &[
                    "Rule name",
                    "Source IP",
                    "Destination IP",
                    "Protocol",
                    "Source port",
                    "Destination port",
                    "Authentication",
                ],
                &cells,
            ));
            s
        }
    }
}

fn markdown_rules(catalog: &Catalog, rows: &[EffectiveRule], role: Option<&str>) -> String {
    let mut s = format!("# Firewall report: {}\n\n", catalog.origin);
    let _ = writeln!(
        s,
        "Client media ports: {}-{}. Inbound rules match packets to the role's address, outbound rules packets \
         from it, both by destination port; outbound rules are the role's own connections and open nothing \
         inbound. Rules with match `source` name the peer's port: replies from it pass as established traffic \
         and open nothing.\n",
        catalog.client_media.0, catalog.client_media.1
    );
    // With --role: one section, the owning role in a column. Without: one section per role.
    let sections: Vec<(&str, Vec<&EffectiveRule>)> = match role {
        Some(r) => vec![(r, rows.iter().collect())],
        None => catalog
            .roles
            .iter()
            .map(|def| {
                (
                    def.id.as_str(),
                    rows.iter().filter(|x| x.role == def.id).collect(),
                )
            })
            .collect(),
    };
    for (id, rules) in sections {
        let def = catalog.role(id);
        let _ = writeln!(s, "## {id}\n");
        if let Some(def) = def {
            let _ = writeln!(s, "Label: {}\n", def.label);
            if !def.includes.is_empty() {
                let _ = writeln!(s, "Includes: {}. {}\n", def.includes.join(", "), def.why);
            }
        }
        if rules.is_empty() {
            s.push_str("_No rules._\n\n");
            continue;
        }
        for table in SeedTable::ALL {
            let cells: Vec<Vec<String>> = rules
                .iter()
                .filter(|r| r.table == table)
                .map(|r| {
                    vec![
                        r.role.clone(),
                        r.service.clone(),
                        r.protocol.to_string(),
                        r.ports_text(),
                        r.transport.clone(),
                        r.side.to_string(),
                        r.direction.to_string(),
                        peers_text(&r.peers),
                        r.note.clone(),
                    ]
                })
                .collect();
            if cells.is_empty() {
                continue;
            }
            let _ = writeln!(s, "### {}\n\nFrom `{}`.\n", table.title(), table.document());
            s.push_str(&md_table(
                &[
                    "Role",
                    "Service",
                    "Protocol",
                    "Port",
                    "Transport",
                    "Match",
                    "Direction",
                    "Peers",
                    "Note",
                ],
                &cells,
            ));
            s.push('\n');
        }
    }
    if !catalog.addresses.is_empty() {
        s.push_str("## Address sets\n\n");
        s.push_str(
            "A rule with peers passes a packet only if its remote side (the source of an inbound rule, the \
             destination of an outbound one) is in one of the sets; an empty set admits no peer.\n\n",
        );
        s.push_str(&md_table(
            &["Set", "Prefixes", "Source", "Note"],
            &set_cells(catalog),
        ));
    }
    s
}

/// A rule's sets for a table cell: `any` when it names none.
fn peers_text(peers: &[String]) -> String {
    if peers.is_empty() {
        "any".into()
    } else {
        peers.join(",")
    }
}

fn set_cells(catalog: &Catalog) -> Vec<Vec<String>> {
    catalog
        .addresses
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                if a.cidrs.is_empty() {
                    "(empty)".into()
                } else {
                    a.cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                set_source(a).into(),
                a.note.clone(),
            ]
        })
        .collect()
}

fn set_source(a: &AddressSet) -> &'static str {
    match (&a.source, &a.file) {
        (SetSource::Flag, _) => "--addresses",
        (SetSource::Catalog, Some(_)) => "catalog+file",
        (SetSource::Catalog, None) => "catalog",
    }
}

/// The address sets, in every format.
pub fn render_sets(catalog: &Catalog, format: ShowFormat) -> String {
    let cells = set_cells(catalog);
    match format {
        ShowFormat::Table => aligned(&["SET", "PREFIXES", "SOURCE", "NOTE"], &cells),
        ShowFormat::Csv => csv(&["id", "cidrs", "source", "note"], &cells),
        ShowFormat::Md => {
            let mut s = format!("# Address sets: {}\n\n", catalog.origin);
            s.push_str(&md_table(&["Set", "Prefixes", "Source", "Note"], &cells));
            s
        }
        ShowFormat::Json => {
            let out: Vec<JsonSet<'_>> = catalog
                .addresses
                .iter()
                .map(|a| JsonSet {
                    id: &a.id,
                    cidrs: a.cidrs.iter().map(ToString::to_string).collect(),
                    file: a.file.as_deref(),
                    source: match a.source {
                        SetSource::Flag => "flag",
                        SetSource::Catalog => "catalog",
                    },
                    note: &a.note,
                })
                .collect();
            json(&out)
        }
    }
}

fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut s = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell}{}  ", " ".repeat(w - width(cell)));
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    s
}

/// RFC 4180: CRLF line ends; fields with a comma, quote or line break are quoted, quotes doubled.
fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\r', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = header
        .iter()
        .map(|h| field(h))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    for row in rows {
        out.push_str(&row.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    fn cell(s: &str) -> String {
        s.replace('|', "\\|").replace(['\r', '\n'], " ")
    }
    let mut s = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(
            s,
            "| {} |",
            row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    s
}

fn json<T: Serialize>(value: &T) -> String {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        // Only strings and numbers go in; serializing them cannot fail.
        Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
    }
}

#[cfg(test)]
mod tests {
    use portguard::catalog::{Catalog, EDGE_DOCUMENT};

    use super::ShowFormat;

    #[test]
    fn show_formats() {
        let c = Catalog::embedded();
        let rows = super::rows(&c, Some("front-end")).unwrap_or_else(|e| panic!("{e}"));
        let json = super::render_rules(&c, &rows, Some("front-end"), ShowFormat::Json);
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("json: {e}\n{json}"));
        let arr = v.as_array().expect("an array");
        assert_eq!(arr.len(), rows.len());
        for key in [
            "role",
            "service",
            "protocol",
            "port_start",
            "port_end",
            "transport",
            "table",
            "document",
            "match",
            "direction",
            "note",
        ] {
            assert!(
                arr[0].get(key).is_some(),
                "json objects carry `{key}`: {}",
                arr[0]
            );
        }
        assert!(arr.iter().any(|o| o["role"] == "all-servers"
            && o["protocol"] == "udp"
            && o["port_start"] == 1434));

        let csv = super::render_rules(&c, &rows, None, ShowFormat::Csv);
        assert!(csv.starts_with(
            "role,service,protocol,port_start,port_end,transport,table,match,direction,note,peers\r\n"
        ));
        assert!(
            csv.contains(",\"HTTPS, TCP\","),
            "a comma in a field is quoted"
        );
        assert!(csv.contains("\"\"port 4443\"\""), "quotes are doubled");

        let md = super::render_rules(&c, &rows, Some("front-end"), ShowFormat::Md);
        assert!(
            md.contains("## front-end\n")
                && md.contains("### Required server ports (by server role)"),
            "{md}"
        );

        let all = super::rows(&c, None).unwrap_or_else(|e| panic!("{e}"));
        let md_all = super::render_rules(&c, &all, None, ShowFormat::Md);
        for id in c.role_ids() {
            assert!(md_all.contains(&format!("## {id}\n")), "a section for {id}");
        }
        assert!(md_all.contains("### Hardware load balancer ports if using DNS load balancing"));

        let table = super::render_rules(&c, &rows, None, ShowFormat::Table);
        let header = table.lines().next().unwrap_or_default();
        let ports_col = header.find("PORTS").unwrap_or_else(|| panic!("{header}"));
        let line = table
            .lines()
            .find(|l| l.contains("SQL Browser"))
            .unwrap_or_else(|| panic!("{table}"));
        assert_eq!(
            line.get(ports_col..ports_col + 4),
            Some("1434"),
            "aligned columns:\n{header}\n{line}"
        );

        let ipsec = super::render_ipsec(&c, ShowFormat::Csv);
        assert_eq!(ipsec.lines().count(), 16, "header and 15 rows");
    }

    #[test]
    fn show_formats_carry_the_direction() {
        let c = Catalog::embedded();
        let rows = super::rows(&c, Some("av-edge-external")).unwrap_or_else(|e| panic!("{e}"));
        let json = super::render_rules(&c, &rows, Some("av-edge-external"), ShowFormat::Json);
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("json: {e}\n{json}"));
        let arr = v.as_array().expect("an array");
        let find = |proto: &str, port: u64, dir: &str| {
            arr.iter().any(|o| {
                o["protocol"] == proto
                    && o["port_start"] == port
                    && o["direction"] == dir
                    && o["role"] == "av-edge-external"
                    && o["table"] == "edge-external"
                    && o["document"] == EDGE_DOCUMENT
            })
        };
        assert!(find("udp", 3478, "inbound"), "{json}");
        assert!(find("udp", 3478, "outbound"), "{json}");
        assert!(find("udp", 50000, "outbound"), "{json}");
        assert!(!find("udp", 50000, "inbound"), "{json}");

        let table = super::render_rules(&c, &rows, None, ShowFormat::Table);
        let header = table.lines().next().unwrap_or_default();
        assert!(header.ends_with("DIRECTION  PEERS"), "{header}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("50000-59999") && l.contains("outbound") && l.ends_with("any")),
            "{table}"
        );
        let csv = super::render_rules(&c, &rows, None, ShowFormat::Csv);
        assert!(
            csv.lines()
                .any(|l| l.contains(",50000,59999,") && l.contains(",destination,outbound,")),
            "{csv}"
        );
        let md = super::render_rules(&c, &rows, Some("av-edge-external"), ShowFormat::Md);
        assert!(
            md.contains("### External port firewall summary table")
                && md.contains(EDGE_DOCUMENT)
                && md.contains("| destination | outbound |"),
            "{md}"
        );
    }

    #[test]
    fn show_carries_the_peers_and_the_sets() {
        let c = Catalog::embedded();
        let rows = super::rows(&c, Some("edge-internal")).unwrap_or_else(|e| panic!("{e}"));
        let json = super::render_rules(&c, &rows, Some("edge-internal"), ShowFormat::Json);
        let v: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("json: {e}\n{json}"));
        let arr = v.as_array().expect("an array");
        let peers_of = |port: u64, dir: &str| -> Vec<String> {
            arr.iter()
                .find(|o| o["port_start"] == port && o["direction"] == dir)
                .and_then(|o| o["peers"].as_array())
                .unwrap_or_else(|| panic!("no peers for {port} {dir}: {json}"))
                .iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        };
        assert_eq!(
            peers_of(5061, "inbound"),
            ["front-end-pool", "director-pool"]
        );
        assert_eq!(
            peers_of(5062, "inbound"),
            ["front-end-pool", "survivable-branch"]
        );
        assert!(
            peers_of(3478, "inbound").is_empty(),
            "media rows name no set"
        );

        let sets = super::render_sets(&c, ShowFormat::Json);
        let v: serde_json::Value =
            serde_json::from_str(&sets).unwrap_or_else(|e| panic!("json: {e}\n{sets}"));
        let fed = v
            .as_array()
            .and_then(|a| a.iter().find(|o| o["id"] == "federation-partners"))
            .unwrap_or_else(|| panic!("no federation-partners in {sets}"));
        assert_eq!(
            fed["cidrs"],
            serde_json::json!(["0.0.0.0/0", "::/0"]),
            "{sets}"
        );
        assert_eq!(fed["source"], "catalog");

        let arg: portguard::catalog::AddressesArg = "federation-partners=198.19.7.0/24"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let (narrowed, _) = c.with_addresses(&[arg]).unwrap_or_else(|e| panic!("{e}"));
        let table = super::render_sets(&narrowed, ShowFormat::Table);
        assert!(
            table.lines().any(|l| l.starts_with("federation-partners")
                && l.contains("198.19.7.0/24")
                && l.contains("--addresses")),
            "{table}"
        );
    }
}
