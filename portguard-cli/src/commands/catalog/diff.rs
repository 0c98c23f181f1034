//! `portguard catalog diff A B`: what differs between two catalogs, row by
//! row, as plain aligned text.
//!
//! A rule is one row for one protocol (as `catalog show` lists it). Rules of
//! a role are paired by (direction, protocol, service): identical pairs are
//! the same row; what is left pairs in catalog order as a changed row when
//! the service is the same (its ports, transport, table, match side, media
//! note or peer sets differ); the rest are removed (only in A) or added
//! (only in B). Address sets are compared by id: added, removed, or the
//! prefixes each side alone has.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use portguard::catalog::{
    AddressSet, Catalog, CatalogError, Edition, EffectiveRule, IpsecException, RoleDef,
};

/// A or B as the command line gives it: an edition's word or a file.
pub fn load(word: &str) -> Result<Catalog, CatalogError> {
    match Edition::from_word(word) {
        Some(edition) => Ok(Catalog::edition(edition)),
        None => Catalog::load(Path::new(word)).map(|(c, _warnings)| c),
    }
}

/// One side of a changed field.
struct Change {
    field: &'static str,
    old: String,
    new: String,
}

/// What one role's rows became.
#[derive(Default)]
struct RoleRows<'c> {
    removed: Vec<&'c EffectiveRule>,
    added: Vec<&'c EffectiveRule>,
    changed: Vec<(&'c EffectiveRule, Vec<Change>)>,
}

impl RoleRows<'_> {
    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.changed.is_empty()
    }
}

type Identity = (String, &'static str, String);

fn identity(r: &EffectiveRule) -> Identity {
    (
        r.direction.to_string(),
        r.protocol.as_str(),
        r.service.clone(),
    )
}

fn changes(a: &EffectiveRule, b: &EffectiveRule) -> Vec<Change> {
    let mut out = Vec::new();
    let mut field = |field: &'static str, old: String, new: String| {
        if old != new {
            out.push(Change { field, old, new });
        }
    };
    field("ports", a.ports_text(), b.ports_text());
    field("transport", a.transport.clone(), b.transport.clone());
    field("table", a.table.to_string(), b.table.to_string());
    field("match", a.side.to_string(), b.side.to_string());
    field("media", a.media.to_string(), b.media.to_string());
    field("note", a.note.clone(), b.note.clone());
    field("peers", a.peers.join(", "), b.peers.join(", "));
    out
}

/// The address sets that differ, as lines, and how many.
fn sets_diff(a: &[AddressSet], b: &[AddressSet]) -> (String, usize) {
    let mut out = String::new();
    let mut count = 0;
    let summary = |s: &AddressSet| {
        let v4 = s.cidrs.iter().filter(|c| c.addr.is_ipv4()).count();
        format!(
            "{} prefixes: {v4} IPv4, {} IPv6",
            s.cidrs.len(),
            s.cidrs.len() - v4
        )
    };
    for old in a {
        match b.iter().find(|s| s.id == old.id) {
            None => {
                count += 1;
                let _ = writeln!(out, "  - {} ({})", old.id, summary(old));
            }
            Some(new) => {
                let gone: Vec<String> = old
                    .cidrs
                    .iter()
                    .filter(|c| !new.cidrs.contains(c))
                    .map(ToString::to_string)
                    .collect();
                let came: Vec<String> = new
                    .cidrs
                    .iter()
                    .filter(|c| !old.cidrs.contains(c))
                    .map(ToString::to_string)
                    .collect();
                if gone.is_empty() && came.is_empty() && old.note == new.note {
                    continue;
                }
                count += 1;
                let _ = writeln!(out, "  ~ {} ({} -> {})", old.id, summary(old), summary(new));
                for c in gone {
                    let _ = writeln!(out, "      - {c}");
                }
                for c in came {
                    let _ = writeln!(out, "      + {c}");
                }
                if old.note != new.note {
                    let _ = writeln!(out, "      note: {:?} -> {:?}", old.note, new.note);
                }
            }
        }
    }
    for new in b.iter().filter(|s| !a.iter().any(|o| o.id == s.id)) {
        count += 1;
        let _ = writeln!(out, "  + {} ({})", new.id, summary(new));
    }
    (out, count)
}

/// Pairs `old` and `new` (one role's rows) as described in the module doc.
fn pair<'c>(old: &'c [EffectiveRule], new: &'c [EffectiveRule]) -> RoleRows<'c> {
    let mut rows = RoleRows::default();
    let mut new_left: Vec<Option<&EffectiveRule>> = new.iter().map(Some).collect();
    let mut old_left: Vec<&EffectiveRule> = Vec::new();
    for a in old {
        let same = new_left
            .iter_mut()
            .find(|b| b.is_some_and(|b| identity(a) == identity(b) && changes(a, b).is_empty()));
        match same {
            Some(slot) => *slot = None,
            None => old_left.push(a),
        }
    }
    for a in old_left {
        let like = new_left
            .iter_mut()
            .find(|b| b.is_some_and(|b| identity(a) == identity(b)));
        match like.and_then(Option::take) {
            Some(b) => rows.changed.push((b, changes(a, b))),
            None => rows.removed.push(a),
        }
    }
    rows.added = new_left.into_iter().flatten().collect();
    rows
}

fn rule_cells(mark: &str, r: &EffectiveRule) -> Vec<String> {
    vec![
        mark.to_string(),
        r.direction.to_string(),
        r.protocol.to_string(),
        r.ports_text(),
        r.service.clone(),
        format!("({})", r.table),
    ]
}

/// Rows of cells as left-aligned columns two spaces apart, each line
/// indented by `indent`, trailing blanks trimmed.
fn aligned(indent: &str, rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_string();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            line.push_str(cell);
            line.push_str(&" ".repeat(pad + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn describe(c: &Catalog) -> String {
    match c.edition {
        Some(e) => format!("{} (edition {e}: {})", c.origin, e.product()),
        None => format!("{} (no edition named)", c.origin),
    }
}

fn role_summary(r: &RoleDef) -> String {
    let includes = if r.includes.is_empty() {
        String::new()
    } else {
        format!(", includes {}", r.includes.join(", "))
    };
    format!("{}, table {}{includes}", r.label, r.table)
}

fn role_changes(a: &RoleDef, b: &RoleDef) -> Vec<Change> {
    let mut out = Vec::new();
    let mut field = |field: &'static str, old: String, new: String| {
        if old != new {
            out.push(Change { field, old, new });
        }
    };
    field("label", a.label.clone(), b.label.clone());
    field("table", a.table.to_string(), b.table.to_string());
    field("includes", a.includes.join(", "), b.includes.join(", "));
    field(
        "media_path",
        a.media_path.to_string(),
        b.media_path.to_string(),
    );
    field("why", a.why.clone(), b.why.clone());
    out
}

fn ipsec_fields(e: &IpsecException) -> [(&'static str, &str); 6] {
    [
        ("source", &e.source),
        ("destination", &e.destination),
        ("protocol", &e.protocol),
        ("source ports", &e.source_ports),
        ("destination ports", &e.destination_ports),
        ("authentication", &e.authentication),
    ]
}

fn write_changes(out: &mut String, indent: &str, changes: &[Change]) {
    for c in changes {
        let _ = writeln!(out, "{indent}{}: {:?} -> {:?}", c.field, c.old, c.new);
    }
}

/// The difference of `a` and `b`, named as the command line named them.
pub fn render(a_name: &str, a: &Catalog, b_name: &str, b: &Catalog) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "--- {a_name}: {}", describe(a));
    let _ = writeln!(out, "+++ {b_name}: {}", describe(b));

    // Roles in A's order, then the ones only B has.
    let mut order: Vec<&str> = a.role_ids();
    order.extend(b.role_ids().into_iter().filter(|id| a.role(id).is_none()));

    let (mut roles_removed, mut roles_added, mut roles_changed) = (0, 0, 0);
    let (mut rules_removed, mut rules_added, mut rules_changed) = (0, 0, 0);
    let mut sections = String::new();
    for id in order {
        let (old_def, new_def) = (a.role(id), b.role(id));
        let old = a.own_rules(id);
        let new = b.own_rules(id);
        let rows = pair(&old, &new);
        let heading = match (old_def, new_def) {
            (Some(r), None) => {
                roles_removed += 1;
                Some(format!("role {id}: removed ({})", role_summary(r)))
            }
            (None, Some(r)) => {
                roles_added += 1;
                Some(format!("role {id}: added ({})", role_summary(r)))
            }
            (Some(x), Some(y)) => {
                let changes = role_changes(x, y);
                if changes.is_empty() {
                    (!rows.is_empty()).then(|| format!("role {id}:"))
                } else {
                    roles_changed += 1;
                    let mut s = format!("role {id}: changed");
                    for c in changes {
                        let _ = write!(s, "\n    {}: {:?} -> {:?}", c.field, c.old, c.new);
                    }
                    Some(s)
                }
            }
            (None, None) => None,
        };
        let Some(heading) = heading else { continue };
        let _ = writeln!(sections, "\n{heading}");
        rules_removed += rows.removed.len();
        rules_added += rows.added.len();
        rules_changed += rows.changed.len();
        let mut cells: Vec<Vec<String>> = Vec::new();
        cells.extend(rows.removed.iter().map(|r| rule_cells("-", r)));
        cells.extend(rows.added.iter().map(|r| rule_cells("+", r)));
        sections.push_str(&aligned("  ", &cells));
        for (r, changes) in &rows.changed {
            sections.push_str(&aligned("  ", &[rule_cells("~", r)]));
            write_changes(&mut sections, "      ", changes);
        }
    }

    let mut ipsec = String::new();
    let old_ipsec: BTreeMap<&str, &IpsecException> =
        a.ipsec.iter().map(|e| (e.name.as_str(), e)).collect();
    let new_ipsec: BTreeMap<&str, &IpsecException> =
        b.ipsec.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut ipsec_count = 0;
    for e in &a.ipsec {
        match new_ipsec.get(e.name.as_str()) {
            None => {
                ipsec_count += 1;
                let _ = writeln!(ipsec, "  - {}", e.name);
            }
            Some(n) => {
                let changes: Vec<Change> = ipsec_fields(e)
                    .into_iter()
                    .zip(ipsec_fields(n))
                    .filter(|((_, x), (_, y))| x != y)
                    .map(|((field, x), (_, y))| Change {
                        field,
                        old: x.to_string(),
                        new: y.to_string(),
                    })
                    .collect();
                if !changes.is_empty() {
                    ipsec_count += 1;
                    let _ = writeln!(ipsec, "  ~ {}", e.name);
                    write_changes(&mut ipsec, "      ", &changes);
                }
            }
        }
    }
    for e in b
        .ipsec
        .iter()
        .filter(|e| !old_ipsec.contains_key(e.name.as_str()))
    {
        ipsec_count += 1;
        let _ = writeln!(ipsec, "  + {}", e.name);
    }

    out.push_str(&sections);
    let (sets, sets_count) = sets_diff(&a.addresses, &b.addresses);
    if !sets.is_empty() {
        let _ = writeln!(out, "\naddress sets:");
        out.push_str(&sets);
    }
    if a.client_media != b.client_media {
        let _ = writeln!(
            out,
            "\nclient media ports: {}-{} -> {}-{}",
            a.client_media.0, a.client_media.1, b.client_media.0, b.client_media.1
        );
    }
    if !ipsec.is_empty() {
        let _ = writeln!(out, "\nIPsec exceptions:");
        out.push_str(&ipsec);
    }
    let _ = writeln!(
        out,
        "\nroles: {roles_removed} removed, {roles_added} added, {roles_changed} changed; \
         rules: {rules_removed} removed, {rules_added} added, {rules_changed} changed; \
         address sets: {sets_count} differ; IPsec exceptions: {ipsec_count} differ"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Catalog {
        Catalog::parse(text, "t.toml")
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    #[test]
    fn editions_differ_by_xmpp_and_persistent_chat() {
        let text = render(
            "2015",
            &Catalog::edition(Edition::Sfb2015),
            "2019",
            &Catalog::edition(Edition::Sfb2019),
        );
        assert!(
            text.starts_with("--- 2015: catalog/sfb2015.toml (edition 2015: Skype for Business Server 2015)\n+++ 2019: catalog/sfb2019.toml (edition 2019: "),
            "{text}"
        );
        assert!(
            text.contains("\nrole persistent-chat: removed (持久聊天前端服务器, table server, includes all-servers)\n  -  inbound  tcp  5041  Persistent Chat SIP  "),
            "{text}"
        );
        assert!(
            text.contains("\nrole access-edge-external:\n  -  inbound   tcp  5269  XMPP Proxy service  (edge-external)\n  -  outbound  tcp  5269  XMPP Proxy service  (edge-external)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nrole edge-internal:\n  -  inbound  tcp  23456  XMPP Proxy service (from the XMPP Gateway)  (edge-internal)\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\nroles: 1 removed, 0 added, 0 changed; rules: 8 removed, 0 added, 0 changed; address sets: 0 differ; IPsec exceptions: 0 differ\n"),
            "{text}"
        );
        assert!(
            !text.contains("role front-end"),
            "unchanged roles are not listed: {text}"
        );
    }

    #[test]
    fn the_reverse_adds_what_the_forward_removes() {
        let text = render(
            "2019",
            &Catalog::edition(Edition::Sfb2019),
            "2015",
            &Catalog::edition(Edition::Sfb2015),
        );
        assert!(text.contains("\nrole persistent-chat: added ("), "{text}");
        assert!(
            text.ends_with("roles: 0 removed, 1 added, 0 changed; rules: 0 removed, 8 added, 0 changed; address sets: 0 differ; IPsec exceptions: 0 differ\n"),
            "{text}"
        );
    }

    #[test]
    fn a_catalog_against_itself_differs_in_nothing() {
        let c = Catalog::edition(Edition::Sfb2015);
        let text = render("a", &c, "b", &c);
        assert_eq!(
            text.lines().skip(2).collect::<Vec<_>>(),
            [
                "",
                "roles: 0 removed, 0 added, 0 changed; rules: 0 removed, 0 added, 0 changed; address sets: 0 differ; IPsec exceptions: 0 differ"
            ],
            "{text}"
        );
    }

    #[test]
    fn a_changed_row_names_its_fields() {
        let base = "version = 1\n[[role]]\nid = \"r\"\nlabel = \"R\"\ntable = \"server\"\n[[rule]]\nrole = \"r\"\nservice = \"S\"\nprotocol = \"both\"\nports = \"PORTS\"\ntransport = \"TCP\"\ntable = \"server\"\nnote = \"NOTE\"\n";
        let a = parse(&base.replace("PORTS", "5061").replace("NOTE", "old"));
        let b = parse(
            &base
                .replace("PORTS", "5062")
                .replace("NOTE", "new")
                .replace("label = \"R\"", "label = \"R2\""),
        );
        let text = render("a", &a, "b", &b);
        assert!(
            text.contains("\nrole r: changed\n    label: \"R\" -> \"R2\"\n  ~  inbound  tcp  5062  S  (server)\n      ports: \"5061\" -> \"5062\"\n      note: \"old\" -> \"new\"\n  ~  inbound  udp  5062  S  (server)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "roles: 0 removed, 0 added, 1 changed; rules: 0 removed, 0 added, 2 changed;"
            ),
            "{text}"
        );
    }

    #[test]
    fn sets_and_peers_that_differ() {
        let base = "version = 1\n[[role]]\nid = \"r\"\nlabel = \"R\"\ntable = \"hybrid\"\n[[addresses]]\nid = \"m\"\ncidrs = [CIDRS]\n[[addresses]]\nid = \"OTHER\"\ncidrs = []\n[[rule]]\nrole = \"r\"\nservice = \"S\"\nprotocol = \"tcp\"\nports = 5061\ntransport = \"TCP\"\ntable = \"hybrid\"\ndirection = \"inbound\"\nPEERS\nnote = \"n\"\n";
        let a = parse(
            &base
                .replace("CIDRS", "\"192.0.2.0/24\", \"2001:db8::/32\"")
                .replace("OTHER", "gone")
                .replace("PEERS", ""),
        );
        let b = parse(
            &base
                .replace("CIDRS", "\"192.0.2.0/24\", \"198.51.100.0/24\"")
                .replace("OTHER", "new")
                .replace("PEERS", "peers = \"m\""),
        );
        let text = render("a", &a, "b", &b);
        assert!(
            text.contains("\n  ~  inbound  tcp  5061  S  (hybrid)\n      peers: \"\" -> \"m\"\n"),
            "{text}"
        );
        assert!(
            text.contains("\naddress sets:\n  ~ m (2 prefixes: 1 IPv4, 1 IPv6 -> 2 prefixes: 2 IPv4, 0 IPv6)\n      - 2001:db8::/32\n      + 198.51.100.0/24\n  - gone (0 prefixes: 0 IPv4, 0 IPv6)\n  + new (0 prefixes: 0 IPv4, 0 IPv6)\n"),
            "{text}"
        );
        assert!(text.contains("; address sets: 3 differ;"), "{text}");
    }

    #[test]
    fn an_edition_word_or_a_file() {
        assert_eq!(
            load("2019").map(|c| c.edition).ok(),
            Some(Some(Edition::Sfb2019))
        );
        let e = load("/nonexistent/catalog.toml").err();
        assert!(
            e.is_some_and(|e| e
                .to_string()
                .starts_with("/nonexistent/catalog.toml: error:")),
            "a missing file is an error naming it"
        );
    }
}
