//! TOML text to a validated [`Catalog`].
//!
//! Structural problems (not TOML, unknown keys, wrong types) stop at the first
//! one, because serde stops there; every semantic problem after that is
//! collected, so one `catalog check` run reports them all.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ops::Range,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    MIN_CLIENT_MEDIA_PORTS,
    model::{
        Catalog, CatalogError, Diagnostic, Direction, IpsecException, MatchSide, Protocol, RoleDef,
        Rule, SeedTable, Severity, ports_text,
    },
    resolve,
};

const FORMAT_HINT: &str = "the catalog format is described in docs/catalog.md";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    version: Spanned<i64>,
    #[serde(default)]
    settings: Option<RawSettings>,
    #[serde(default)]
    role: Vec<Spanned<RawRole>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    ipsec: Vec<Spanned<RawIpsec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    client_media_ports: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    id: Spanned<String>,
    label: Spanned<String>,
    table: Spanned<String>,
    #[serde(default)]
    includes: Vec<Spanned<String>>,
    #[serde(default)]
    why: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    role: Spanned<String>,
    service: Spanned<String>,
    protocol: Spanned<String>,
    ports: Spanned<toml::Value>,
    transport: Spanned<String>,
    table: Spanned<String>,
    note: Spanned<String>,
    #[serde(rename = "match")]
    side: Option<Spanned<String>>,
    direction: Option<Spanned<String>>,
    media: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpsec {
    name: Spanned<String>,
    source: String,
    destination: String,
    protocol: String,
    source_ports: String,
    destination_ports: String,
    authentication: String,
}

/// Collects diagnostics and turns byte spans into line and column.
struct Diags<'a> {
    text: &'a str,
    origin: &'a str,
    list: Vec<Diagnostic>,
    /// Byte offset where each line starts: a position is a binary search, so
    /// a catalog of many thousand rules is not read once per rule.
    line_starts: Vec<usize>,
}

impl<'a> Diags<'a> {
    fn new(text: &'a str, origin: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diags {
            text,
            origin,
            list: Vec::new(),
            line_starts,
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let line_start = self.line_starts[line - 1];
        let column = self
            .text
            .get(line_start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        (line, column)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    fn push(
        &mut self,
        span: &Range<usize>,
        severity: Severity,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.list.push(Diagnostic {
            origin: self.origin.to_string(),
            line,
            column,
            severity,
            message,
            hint,
        });
    }

    fn error(&mut self, span: &Range<usize>, message: impl Into<String>, hint: Option<String>) {
        self.push(span, Severity::Error, message.into(), hint);
    }

    fn warning(&mut self, span: &Range<usize>, message: impl Into<String>, hint: Option<String>) {
        self.push(span, Severity::Warning, message.into(), hint);
    }

    fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }

    fn into_sorted(mut self) -> Vec<Diagnostic> {
        // Stable: diagnostics at one place keep the order they were found in.
        self.list.sort_by_key(|d| (d.line, d.column));
        self.list
    }
}

pub(super) fn parse(text: &str, origin: &str) -> Result<(Catalog, Vec<Diagnostic>), CatalogError> {
    let mut d = Diags::new(text, origin);
    let raw: RawCatalog = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().replace('\n', " ");
            let hint = if message.contains("unknown field") || message.contains("missing field") {
                FORMAT_HINT.to_string()
            } else {
                format!("a catalog is a TOML file; {FORMAT_HINT}")
            };
            d.error(&span, message, Some(hint));
            return Err(CatalogError {
                diagnostics: d.into_sorted(),
            });
        }
    };

    if *raw.version.get_ref() != 1 {
        d.error(
            &raw.version.span(),
            format!("unsupported catalog version {}", raw.version.get_ref()),
            Some("this portguard reads `version = 1`".into()),
        );
    }

    let roles = validate_roles(&mut d, &raw.role);
    let known: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    let rules = validate_rules(&mut d, &raw.rule, &known);
    let ipsec = validate_ipsec(&mut d, &raw.ipsec);

    let mut catalog = Catalog {
        origin: origin.to_string(),
        rules,
        roles,
        ipsec,
        client_media: (1024, 65535),
    };
    let media_setting = raw
        .settings
        .as_ref()
        .and_then(|s| s.client_media_ports.as_ref());
    if let Some(setting) = media_setting {
        match parse_ports(setting.get_ref()) {
            Ok((start, end)) => match check_media_range(&catalog, start, end) {
                None => catalog.client_media = (start, end),
                Some((message, hint)) => d.error(&setting.span(), message, hint),
            },
            Err(message) => d.error(&setting.span(), message, Some(PORTS_HINT.into())),
        }
    } else if let Some(r) = catalog.rules.iter().find(|r| r.media) {
        // Without the setting, the media rules keep their own range; it still must meet the 20-port floor.
        let (start, end, line) = (r.declared.0, r.declared.1, r.line);
        match check_media_range(&catalog, start, end) {
            None => catalog.client_media = (start, end),
            Some((message, hint)) => d.error(&line_span(&d, line), message, hint),
        }
    }
    let (start, end) = catalog.client_media;
    for r in catalog.rules.iter_mut().filter(|r| r.media) {
        r.port_start = start;
        r.port_end = end;
    }

    if d.has_errors() {
        return Err(CatalogError {
            diagnostics: d.into_sorted(),
        });
    }
    overlap_warnings(&mut d, &catalog);
    Ok((catalog, d.into_sorted()))
}

fn validate_roles(d: &mut Diags<'_>, raw: &[Spanned<RawRole>]) -> Vec<RoleDef> {
    let mut roles: Vec<RoleDef> = Vec::new();
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for sr in raw {
        let r = sr.get_ref();
        let line = d.line(&sr.span());
        let id = r.id.get_ref().as_str();
        if !valid_id(id) {
            d.error(
                &r.id.span(),
                format!("invalid role id `{id}`"),
                Some(
                    "role ids are lowercase letters, digits and `-`, starting with a letter".into(),
                ),
            );
        }
        if let Some(first) = first_line.get(id) {
            d.error(
                &r.id.span(),
                format!("duplicate role `{id}`, first at line {first}"),
                None,
            );
            continue;
        }
        first_line.insert(id, line);
        if r.label.get_ref().trim().is_empty() {
            d.error(
                &r.label.span(),
                "empty label",
                Some("the label is the published table's row label".into()),
            );
        }
        let table = table_of(d, &r.table);
        let why = r
            .why
            .as_ref()
            .map(|w| w.get_ref().trim().to_string())
            .unwrap_or_default();
        if !r.includes.is_empty() && why.is_empty() {
            d.warning(
                &sr.span(),
                format!("role `{id}` includes other roles without a `why`"),
                Some("state the document's reason for the inclusion in `why`".into()),
            );
        }
        roles.push(RoleDef {
            id: id.to_string(),
            label: r.label.get_ref().trim().to_string(),
            table: table.unwrap_or(SeedTable::Server),
            includes: r.includes.iter().map(|i| i.get_ref().clone()).collect(),
            why,
            line,
        });
    }

    let known: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    let mut includes: BTreeMap<&str, Vec<(&str, Range<usize>)>> = BTreeMap::new();
    for sr in raw {
        let r = sr.get_ref();
        for inc in &r.includes {
            let name = inc.get_ref().as_str();
            if known.contains(&name) {
                includes
                    .entry(r.id.get_ref().as_str())
                    .or_default()
                    .push((name, inc.span()));
            } else {
                d.error(
                    &inc.span(),
                    format!("unknown role `{name}` in includes"),
                    Some(known_roles_hint(&known)),
                );
            }
        }
    }
    report_cycles(d, &known, &includes);
    roles
}

/// Every include cycle once, at the include that closes it.
fn report_cycles(
    d: &mut Diags<'_>,
    known: &[&str],
    includes: &BTreeMap<&str, Vec<(&str, Range<usize>)>>,
) {
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut found: Vec<(Range<usize>, Vec<String>)> = Vec::new();
    fn walk<'a>(
        node: &'a str,
        stack: &mut Vec<&'a str>,
        includes: &BTreeMap<&'a str, Vec<(&'a str, Range<usize>)>>,
        done: &mut BTreeSet<&'a str>,
        found: &mut Vec<(Range<usize>, Vec<String>)>,
    ) {
        if done.contains(node) {
            return;
        }
        stack.push(node);
        for (next, span) in includes.get(node).map(Vec::as_slice).unwrap_or_default() {
            if let Some(pos) = stack.iter().position(|s| s == next) {
                let mut path: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
                path.push(next.to_string());
                found.push((span.clone(), path));
            } else {
                walk(next, stack, includes, done, found);
            }
        }
        stack.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for role in known {
        walk(role, &mut Vec::new(), includes, &mut done, &mut found);
    }
    for (span, path) in found {
        let mut members: Vec<String> = path[..path.len() - 1].to_vec();
        members.sort();
        if seen.insert(members) {
            d.error(
                &span,
                format!("include cycle: {}", path.join(" -> ")),
                Some("a role cannot include itself, directly or through others".into()),
            );
        }
    }
}

fn validate_rules(d: &mut Diags<'_>, raw: &[Spanned<RawRule>], known: &[&str]) -> Vec<Rule> {
    let mut rules = Vec::new();
    // (role, protocols, range, service, side, direction) of each rule seen, and its line.
    type Key = (
        String,
        Vec<Protocol>,
        (u16, u16),
        String,
        MatchSide,
        Direction,
    );
    let mut first: HashMap<Key, usize> = HashMap::new();
    for sr in raw {
        let r = sr.get_ref();
        let line = d.line(&sr.span());
        let errors_before = d.list.len();
        let role = r.role.get_ref().as_str();
        if !known.contains(&role) {
            d.error(
                &r.role.span(),
                format!("unknown role `{role}`"),
                Some(known_roles_hint(known)),
            );
        }
        let service = r.service.get_ref().trim();
        if service.is_empty() {
            d.error(
                &r.service.span(),
                "empty service",
                Some("name the document's service, in English".into()),
            );
        }
        let protocols = match r.protocol.get_ref().as_str() {
            "tcp" => vec![Protocol::Tcp],
            "udp" => vec![Protocol::Udp],
            "both" => vec![Protocol::Tcp, Protocol::Udp],
            other => {
                d.error(
                    &r.protocol.span(),
                    format!("unknown protocol `{other}`"),
                    Some(
                        "expected `tcp`, `udp` or `both`; keep the document's wording in `transport`"
                            .into(),
                    ),
                );
                Vec::new()
            }
        };
        let range = match parse_ports(r.ports.get_ref()) {
            Ok(range) => Some(range),
            Err(message) => {
                d.error(&r.ports.span(), message, Some(PORTS_HINT.into()));
                None
            }
        };
        if r.transport.get_ref().trim().is_empty() {
            d.error(
                &r.transport.span(),
                "empty transport",
                Some("keep the document's protocol wording here".into()),
            );
        }
        let table = table_of(d, &r.table);
        let side = match r.side.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("destination") => MatchSide::Destination,
            Some("source") => MatchSide::Source,
            Some(other) => {
                let span = r.side.as_ref().map_or(sr.span(), Spanned::span);
                d.error(
                    &span,
                    format!("unknown match side `{other}`"),
                    Some("expected `destination` or `source`".into()),
                );
                MatchSide::Destination
            }
        };
        // Absent means inbound: every row of the server, load-balancer and client tables is.
        let direction = match &r.direction {
            None => Direction::Inbound,
            Some(word) => match Direction::from_word(word.get_ref()) {
                Some(direction) => direction,
                None => {
                    d.error(
                        &word.span(),
                        format!("unknown direction `{}`", word.get_ref()),
                        Some(
                            "expected `inbound` (to the role's address) or `outbound` (from it)"
                                .into(),
                        ),
                    );
                    Direction::Inbound
                }
            },
        };
        if direction == Direction::Outbound && side == MatchSide::Source {
            let span = r.side.as_ref().map_or(sr.span(), Spanned::span);
            d.error(
                &span,
                "an outbound rule matches the destination port of what the role sends",
                Some("drop `match = \"source\"`, or make the rule inbound".into()),
            );
        }
        let media = r.media.as_ref().is_some_and(|m| *m.get_ref());
        if media && side == MatchSide::Source {
            let span = r.media.as_ref().map_or(sr.span(), Spanned::span);
            d.error(
                &span,
                "a media rule matches the destination port",
                Some("drop `match = \"source\"` or `media = true`".into()),
            );
        }
        if d.list.len() > errors_before {
            continue;
        }
        let (Some((start, end)), Some(table)) = (range, table) else {
            continue;
        };
        let key: Key = (
            role.to_string(),
            protocols.clone(),
            (start, end),
            service.to_string(),
            side,
            direction,
        );
        if let Some(first_line) = first.get(&key) {
            d.error(
                &sr.span(),
                format!("duplicate rule, first at line {first_line}"),
                Some(
                    "merge the two into one rule and say in its note that the document lists it twice"
                        .into(),
                ),
            );
            continue;
        }
        first.insert(key, line);
        rules.push(Rule {
            role: role.to_string(),
            service: service.to_string(),
            protocols,
            port_start: start,
            port_end: end,
            declared: (start, end),
            transport: r.transport.get_ref().trim().to_string(),
            table,
            note: r.note.get_ref().trim().to_string(),
            side,
            direction,
            media,
            line,
        });
    }
    rules
}

fn validate_ipsec(d: &mut Diags<'_>, raw: &[Spanned<RawIpsec>]) -> Vec<IpsecException> {
    let mut out: Vec<IpsecException> = Vec::new();
    for sr in raw {
        let r = sr.get_ref();
        let line = d.line(&sr.span());
        let name = r.name.get_ref().trim();
        if name.is_empty() {
            d.error(&r.name.span(), "empty IPsec rule name", None);
            continue;
        }
        if let Some(first) = out.iter().find(|e| e.name == name) {
            d.error(
                &r.name.span(),
                format!(
                    "duplicate IPsec rule `{name}`, first at line {}",
                    first.line
                ),
                None,
            );
            continue;
        }
        out.push(IpsecException {
            name: name.to_string(),
            source: r.source.trim().to_string(),
            destination: r.destination.trim().to_string(),
            protocol: r.protocol.trim().to_string(),
            source_ports: r.source_ports.trim().to_string(),
            destination_ports: r.destination_ports.trim().to_string(),
            authentication: r.authentication.trim().to_string(),
            line,
        });
    }
    out
}

const PORTS_HINT: &str =
    "write a port as \"5061\" (or 5061) and a range as \"49152-57500\"; ports are 1-65535";

/// `"5061"`, `5061` or `"A-B"` (inclusive).
pub(super) fn parse_ports(value: &toml::Value) -> Result<(u16, u16), String> {
    let one = |text: &str| -> Result<u16, String> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{text}` is not a port number"));
        }
        match text.parse::<u64>() {
            Ok(0) => Err("port 0 is not a valid port (ports are 1-65535)".into()),
            Ok(n) if n > 65535 => Err(format!("port {n} is out of range (ports are 1-65535)")),
            Ok(n) => u16::try_from(n)
                .map_err(|_| format!("port {n} is out of range (ports are 1-65535)")),
            Err(_) => Err(format!("port {text} is out of range (ports are 1-65535)")),
        }
    };
    let (start, end) = match value {
        toml::Value::Integer(n) => {
            let p = one(&n.to_string()).map_err(|e| {
                if *n < 0 {
                    format!("port {n} is negative")
                } else {
                    e
                }
            })?;
            (p, p)
        }
        toml::Value::String(s) => match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let p = one(s)?;
                (p, p)
            }
        },
        other => {
            return Err(format!(
                "ports must be a string or an integer, not a {}",
                other.type_str()
            ));
        }
    };
    if start > end {
        return Err(format!("range start {start} is greater than its end {end}"));
    }
    Ok((start, end))
}

/// Why `start-end` cannot be the client media range, if it cannot.
pub(super) fn check_media_range(
    catalog: &Catalog,
    start: u16,
    end: u16,
) -> Option<(String, Option<String>)> {
    if start == 0 {
        return Some((
            "port 0 is not a valid port (ports are 1-65535)".into(),
            None,
        ));
    }
    if start > end {
        return Some((
            format!("range start {start} is greater than its end {end}"),
            None,
        ));
    }
    let count = u32::from(end) - u32::from(start) + 1;
    if count < MIN_CLIENT_MEDIA_PORTS {
        return Some((
            format!(
                "client media range {} has {count} port{}; Microsoft's port requirements (ClientMediaPortRange) ask for at least {MIN_CLIENT_MEDIA_PORTS} ports",
                ports_text(start, end),
                if count == 1 { "" } else { "s" }
            ),
            Some(format!(
                "give a range of at least {MIN_CLIENT_MEDIA_PORTS} ports, e.g. 50000-50019"
            )),
        ));
    }
    if let Some(r) = catalog
        .rules
        .iter()
        .find(|r| r.media && (start < r.declared.0 || end > r.declared.1))
    {
        return Some((
            format!(
                "client media range {} is not within {} of the media rule at line {} ({})",
                ports_text(start, end),
                ports_text(r.declared.0, r.declared.1),
                r.line,
                r.service
            ),
            Some("the client media range can only narrow the media rules' range".into()),
        ));
    }
    None
}

fn table_of(d: &mut Diags<'_>, word: &Spanned<String>) -> Option<SeedTable> {
    let t = SeedTable::from_word(word.get_ref());
    if t.is_none() {
        d.error(
            &word.span(),
            format!("unknown table `{}`", word.get_ref()),
            Some(format!(
                "expected one of: {}",
                SeedTable::ALL
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    }
    t
}

fn valid_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(super) fn known_roles_hint(known: &[&str]) -> String {
    format!("known roles: {}", known.join(", "))
}

/// Overlapping destination rules within each role's resolved set, once per pair.
fn overlap_warnings(d: &mut Diags<'_>, catalog: &Catalog) {
    let mut pairs: BTreeMap<(usize, usize), Vec<Protocol>> = BTreeMap::new();
    for role in &catalog.roles {
        let Ok(members) = resolve::closure(catalog, std::slice::from_ref(&role.id)) else {
            continue;
        };
        let idx: Vec<usize> = (0..catalog.rules.len())
            .filter(|&i| {
                let r = &catalog.rules[i];
                r.side == MatchSide::Destination && members.contains(&r.role)
            })
            .collect();
        // A sweep over the rules sorted by start: each rule meets only those
        // that start before it ends, so the work is the overlaps, not n².
        let mut by_start = idx;
        by_start.sort_by_key(|&i| (catalog.rules[i].port_start, i));
        for (n, &x) in by_start.iter().enumerate() {
            let end = catalog.rules[x].port_end;
            for &y in by_start[n + 1..]
                .iter()
                .take_while(|&&y| catalog.rules[y].port_start <= end)
            {
                let (i, j) = (x.min(y), x.max(y));
                let (a, b) = (&catalog.rules[i], &catalog.rules[j]);
                // An inbound and an outbound rule on one port never meet: one
                // matches packets to the role's address, the other packets from it.
                if a.direction != b.direction {
                    continue;
                }
                for p in a.protocols.iter().filter(|p| b.protocols.contains(p)) {
                    let entry = pairs.entry((i, j)).or_default();
                    if !entry.contains(p) {
                        entry.push(*p);
                    }
                }
            }
        }
    }
    for ((i, j), protocols) in pairs {
        let (a, b) = (&catalog.rules[i], &catalog.rules[j]);
        let (lo, hi) = (a.port_start.max(b.port_start), a.port_end.min(b.port_end));
        let (wa, wb) = (a.port_end - a.port_start, b.port_end - b.port_start);
        let winner = if wb < wa { b } else { a };
        let protos: Vec<&str> = protocols.iter().map(|p| p.as_str()).collect();
        let span = line_span(d, b.line);
        d.warning(
            &span,
            format!(
                "{} {} {} of this rule ({}, {}) overlaps the rule at line {} ({}, {} {})",
                b.direction,
                protos.join("/"),
                ports_text(lo, hi),
                b.role,
                b.service,
                a.line,
                a.role,
                a.service,
                ports_text(a.port_start, a.port_end),
            ),
            Some(format!(
                "on a host with both, these ports count for the rule at line {} ({}): the narrower range wins, then the earlier rule",
                winner.line, winner.service
            )),
        );
    }
}

/// The byte span of the start of a 1-based line.
fn line_span(d: &Diags<'_>, line: usize) -> Range<usize> {
    let offset = d
        .line_starts
        .get(line.saturating_sub(1))
        .copied()
        .unwrap_or(d.text.len());
    offset..offset
}
