//! TOML text to a validated [`Catalog`].
//!
//! Structural problems (not TOML, unknown keys, wrong types) stop at the first
//! one, because serde stops there; every semantic problem after that is
//! collected, so one `catalog check` run reports them all.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    ops::Range,
};

use classifier_common::MAX_RULE_SLOTS;
use serde::Deserialize;
use toml::Spanned;

use super::{
    MIN_CLIENT_MEDIA_PORTS,
    model::{
        AddressSet, Catalog, CatalogError, Diagnostic, Direction, Edition, IpsecException,
        MatchSide, Payload, Protocol, RoleDef, Rule, SeedTable, Severity, ports_text,
    },
};

const FORMAT_HINT: &str = "the catalog format is described in docs/catalog.md";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    version: Spanned<i64>,
    /// The release the tables are for: `"2015"` or `"2019"`.
    #[serde(default)]
    edition: Option<Spanned<String>>,
    /// A derived catalog: the embedded edition it starts from (see derive.rs).
    #[serde(default)]
    base: Option<Spanned<String>>,
    #[serde(default)]
    remove: Vec<Spanned<super::derive::RawRemove>>,
    #[serde(default)]
    remove_role: Vec<Spanned<super::derive::RawRemoveRole>>,
    #[serde(default)]
    settings: Option<RawSettings>,
    #[serde(default)]
    role: Vec<Spanned<RawRole>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    ipsec: Vec<Spanned<RawIpsec>>,
    #[serde(default)]
    addresses: Vec<Spanned<RawAddresses>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAddresses {
    pub(super) id: Spanned<String>,
    #[serde(default)]
    pub(super) cidrs: Vec<Spanned<String>>,
    pub(super) file: Option<Spanned<String>>,
    pub(super) note: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    client_media_ports: Option<Spanned<toml::Value>>,
    reflection_ports: Option<Spanned<Vec<Spanned<toml::Value>>>>,
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
    #[serde(default)]
    media_path: Option<Spanned<bool>>,
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
    payload: Option<Spanned<String>>,
    /// A set id, or a list of them.
    peers: Option<Spanned<toml::Value>>,
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

/// Roles a catalog may define. The default catalog has 17; the cap bounds
/// the reachability tables overlap detection builds (roles × root roles bits).
pub(crate) const MAX_ROLES: usize = 8_192;

/// Distinct destination rules a catalog may have, counting each protocol of
/// a rule once: every one needs a counter slot, and slot 0 means "no rule".
/// The same limit `run` applies when it hands out slots.
pub(crate) const MAX_RULE_ENTRIES: usize = MAX_RULE_SLOTS as usize - 1;

/// Diagnostics reported per catalog: the first ones in file order, then one
/// that counts the rest, so a hostile file cannot make megabytes of output.
pub(crate) const MAX_DIAGNOSTICS: usize = 64;

/// Overlapping rule pairs listed one by one; the rest are counted.
pub(crate) const MAX_OVERLAPS_LISTED: usize = 32;

/// Rule pairs the overlap sweep compares before it stops counting: 2,000
/// fully nested rules (about 2 million pairs) are still counted exactly.
const MAX_OVERLAP_COMPARISONS: usize = 4_000_000;

/// Include cycles reported one by one.
const MAX_CYCLES_LISTED: usize = 20;

/// A diagnostic before its place is turned into line and column (which costs
/// a scan of the line: only done for the ones that are reported).
pub(super) struct Pending {
    /// Byte offset into the text; `None` for a finding about the whole file.
    pub(super) offset: Option<usize>,
    pub(super) severity: Severity,
    pub(super) message: String,
    pub(super) hint: Option<String>,
    /// A finding in another file (an address set's `file`): its name and
    /// line, reported instead of the catalog's place (which orders it).
    pub(super) elsewhere: Option<(String, usize)>,
}

impl Pending {
    fn order(&self) -> usize {
        self.offset.map_or(0, |o| o + 1)
    }
}

/// Collects diagnostics and turns byte spans into line and column. Keeps at
/// most about `2 * MAX_DIAGNOSTICS` in memory: the earliest in the file, and
/// a count of the others.
pub(super) struct Diags<'a> {
    text: &'a str,
    pub(super) origin: &'a str,
    list: Vec<Pending>,
    errors: usize,
    dropped_errors: usize,
    dropped_warnings: usize,
    /// The earliest place among the dropped ones.
    first_dropped: Option<usize>,
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
            errors: 0,
            dropped_errors: 0,
            dropped_warnings: 0,
            first_dropped: None,
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

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        self.position_line(span.start)
    }

    /// The line alone: a binary search, without the column's scan of the line.
    fn position_line(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    fn push(
        &mut self,
        span: &Range<usize>,
        severity: Severity,
        message: String,
        hint: Option<String>,
    ) {
        self.push_pending(Pending {
            offset: Some(span.start),
            severity,
            message,
            hint,
            elsewhere: None,
        });
    }

    pub(super) fn push_pending(&mut self, p: Pending) {
        if p.severity == Severity::Error {
            self.errors += 1;
        }
        self.list.push(p);
        if self.list.len() >= 2 * MAX_DIAGNOSTICS {
            self.keep_first(MAX_DIAGNOSTICS);
        }
    }

    /// Keeps the `n` earliest (stable: findings at one place keep the order
    /// they were found in) and counts the others.
    fn keep_first(&mut self, n: usize) {
        self.list.sort_by_key(Pending::order);
        if self.list.len() <= n {
            return;
        }
        for p in self.list.drain(n..) {
            match p.severity {
                Severity::Error => self.dropped_errors += 1,
                Severity::Warning => self.dropped_warnings += 1,
            }
            let at = p.offset.unwrap_or(0);
            self.first_dropped = Some(self.first_dropped.map_or(at, |f| f.min(at)));
        }
    }

    pub(super) fn error(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(span, Severity::Error, message.into(), hint);
    }

    pub(super) fn warning(
        &mut self,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(span, Severity::Warning, message.into(), hint);
    }

    pub(super) fn has_errors(&self) -> bool {
        self.errors > 0
    }

    pub(super) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.keep_first(MAX_DIAGNOSTICS);
        let mut out: Vec<Diagnostic> = self
            .list
            .iter()
            .map(|p| {
                let (origin, (line, column)) = match &p.elsewhere {
                    Some((file, line)) => (file.as_str(), (*line, 1)),
                    None => (self.origin, p.offset.map_or((0, 0), |o| self.position(o))),
                };
                Diagnostic {
                    origin: origin.to_string(),
                    line,
                    column,
                    severity: p.severity,
                    message: p.message.clone(),
                    hint: p.hint.clone(),
                }
            })
            .collect();
        if let Some(at) = self.first_dropped {
            let (line, column) = self.position(at);
            out.push(Diagnostic::omitted(
                self.origin,
                (line, column),
                self.dropped_errors,
                self.dropped_warnings,
            ));
        }
        out
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

    let edition = raw.edition.as_ref().and_then(|e| edition_of(&mut d, e));
    if let Some(base) = &raw.base {
        let own = raw
            .role
            .first()
            .map(Spanned::span)
            .or_else(|| raw.rule.first().map(Spanned::span))
            .or_else(|| raw.ipsec.first().map(Spanned::span))
            .or_else(|| raw.addresses.first().map(Spanned::span));
        let parts = super::derive::Parts {
            edition,
            base,
            remove: &raw.remove,
            remove_role: &raw.remove_role,
            own,
            settings: raw.settings.is_some(),
        };
        return super::derive::derive(d, origin, parts);
    }
    if let Some(first) = raw.remove.first() {
        d.error(
            &first.span(),
            "`[[remove]]` without `base`",
            Some(
                "a catalog that removes rows names the edition it starts from: `base = \"2015\"`"
                    .into(),
            ),
        );
    }
    if let Some(first) = raw.remove_role.first() {
        d.error(
            &first.span(),
            "`[[remove_role]]` without `base`",
            Some(
                "a catalog that removes roles names the edition it starts from: `base = \"2015\"`"
                    .into(),
            ),
        );
    }

    if let Some(extra) = raw.role.get(MAX_ROLES) {
        // Refused before anything is built from them.
        d.error(
            &extra.span(),
            format!("more than {MAX_ROLES} roles"),
            Some("the limits of a catalog are in docs/catalog.md".into()),
        );
        return Err(CatalogError {
            diagnostics: d.into_sorted(),
        });
    }

    let roles = validate_roles(&mut d, &raw.role);
    let addresses = super::sets::validate_sets(&mut d, &raw.addresses);
    let rules = validate_rules(&mut d, &raw.rule, &roles, &addresses);
    let ipsec = validate_ipsec(&mut d, &raw.ipsec);

    let mut catalog = Catalog {
        origin: origin.to_string(),
        edition,
        rules,
        roles,
        ipsec,
        addresses,
        client_media: (1024, 65535),
        reflection_ports: Vec::new(),
    };
    if let Some(ports) = raw
        .settings
        .as_ref()
        .and_then(|s| s.reflection_ports.as_ref())
    {
        for p in ports.get_ref() {
            match p.get_ref().as_integer() {
                Some(n @ 1..=65_535) => catalog.reflection_ports.push(n as u16),
                Some(n) => d.error(
                    &p.span(),
                    format!("port {n} is out of range (ports are 1-65535)"),
                    Some("reflection_ports is a list of UDP source ports, e.g. [53, 123]".into()),
                ),
                None => d.error(
                    &p.span(),
                    format!("a {} is not a port", p.get_ref().type_str()),
                    Some("reflection_ports is a list of UDP source ports, e.g. [53, 123]".into()),
                ),
            }
        }
        catalog.reflection_ports.sort_unstable();
        catalog.reflection_ports.dedup();
    }
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
            media_path: r.media_path.as_ref().is_some_and(|m| *m.get_ref()),
            line,
        });
    }

    let index: HashMap<&str, usize> = roles
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    // The include edges by role index, each with the place that states it.
    let mut includes: Vec<Vec<(usize, Range<usize>)>> = vec![Vec::new(); roles.len()];
    for sr in raw {
        let r = sr.get_ref();
        let Some(&from) = index.get(r.id.get_ref().as_str()) else {
            continue;
        };
        for inc in &r.includes {
            let name = inc.get_ref().as_str();
            match index.get(name) {
                Some(&to) => includes[from].push((to, inc.span())),
                None => d.error(
                    &inc.span(),
                    format!("unknown role `{name}` in includes"),
                    Some(known_roles_hint(&roles)),
                ),
            }
        }
    }
    report_cycles(d, &roles, &includes);
    roles
}

/// Include cycles, each once, at the include that closes it. One iterative
/// depth-first walk, so each role and include is visited once whatever the
/// shape (a chain of thousands of roles included).
fn report_cycles(d: &mut Diags<'_>, roles: &[RoleDef], includes: &[Vec<(usize, Range<usize>)>]) {
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![UNSEEN; roles.len()];
    // Where each role on the path sits in `path`.
    let mut depth = vec![0usize; roles.len()];
    let mut path: Vec<usize> = Vec::new();
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    let mut more: Option<(usize, Range<usize>)> = None;
    for start in 0..roles.len() {
        if state[start] != UNSEEN {
            continue;
        }
        // (role, index of its next include to follow)
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = ON_PATH;
        path.push(start);
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let Some((to, span)) = includes[node].get(next) else {
                state[node] = DONE;
                path.pop();
                stack.pop();
                continue;
            };
            top.1 += 1;
            match state[*to] {
                UNSEEN => {
                    state[*to] = ON_PATH;
                    depth[*to] = path.len();
                    path.push(*to);
                    stack.push((*to, 0));
                }
                ON_PATH if seen.len() < MAX_CYCLES_LISTED => {
                    let cycle = &path[depth[*to]..];
                    let mut members = cycle.to_vec();
                    members.sort_unstable();
                    if seen.insert(members) {
                        let mut names: Vec<&str> =
                            cycle.iter().map(|&i| roles[i].id.as_str()).collect();
                        names.push(roles[*to].id.as_str());
                        d.error(
                            span,
                            format!("include cycle: {}", names.join(" -> ")),
                            Some("a role cannot include itself, directly or through others".into()),
                        );
                    }
                }
                ON_PATH => {
                    let (n, first) = more.take().unwrap_or((0, span.clone()));
                    more = Some((n + 1, first));
                }
                _ => {}
            }
        }
    }
    if let Some((n, span)) = more {
        d.error(
            &span,
            format!(
                "this and {} more include{} close further cycles (the first {MAX_CYCLES_LISTED} cycles are listed)",
                n - 1,
                if n == 2 { "" } else { "s" }
            ),
            None,
        );
    }
}

fn validate_rules(
    d: &mut Diags<'_>,
    raw: &[Spanned<RawRule>],
    roles: &[RoleDef],
    sets: &[AddressSet],
) -> Vec<Rule> {
    let known: HashSet<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    let roles_hint = known_roles_hint(roles);
    let mut rules = Vec::new();
    // The counter slots the rules need: one per (role, service, protocol, range).
    let mut slots: HashSet<(&str, &str, Protocol, (u16, u16))> = HashSet::new();
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
        let errors_before = d.errors;
        let role = r.role.get_ref().as_str();
        if !known.contains(role) {
            d.error(
                &r.role.span(),
                format!("unknown role `{role}`"),
                Some(roles_hint.clone()),
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
        let protocols = match Protocol::from_catalog_word(r.protocol.get_ref()) {
            Some(protocols) => protocols,
            None => {
                d.error(
                    &r.protocol.span(),
                    format!("unknown protocol `{}`", r.protocol.get_ref()),
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
        let payload = match &r.payload {
            None => Payload::Any,
            Some(word) => match Payload::from_word(word.get_ref()) {
                Some(Payload::Media) if !protocols.contains(&Protocol::Udp) => {
                    d.error(
                        &word.span(),
                        "`payload = \"media\"` checks UDP datagrams; this rule has no UDP",
                        Some(
                            "drop the key, or give the rule `protocol = \"udp\"` or `\"both\"`"
                                .into(),
                        ),
                    );
                    Payload::Any
                }
                Some(Payload::Media) if side == MatchSide::Source => {
                    d.error(
                        &word.span(),
                        "a `payload = \"media\"` rule matches the destination port",
                        Some("drop `match = \"source\"` or the payload key".into()),
                    );
                    Payload::Any
                }
                Some(payload) => payload,
                None => {
                    d.error(
                        &word.span(),
                        format!("unknown payload `{}`", word.get_ref()),
                        Some("expected `media` or `any`".into()),
                    );
                    Payload::Any
                }
            },
        };
        let peers = match &r.peers {
            None => Vec::new(),
            Some(value) => super::sets::rule_peers(d, value, sets, side),
        };
        if d.errors > errors_before {
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
        if side == MatchSide::Destination {
            for &p in &protocols {
                slots.insert((role, service, p, (start, end)));
            }
            if slots.len() > MAX_RULE_ENTRIES {
                // Early: nothing past this rule is read, and `run` could not load the policy.
                d.error(
                    &sr.span(),
                    too_many_rules(),
                    Some(TOO_MANY_RULES_HINT.into()),
                );
                break;
            }
        }
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
            payload,
            peers,
            line,
        });
    }
    rules
}

fn validate_ipsec(d: &mut Diags<'_>, raw: &[Spanned<RawIpsec>]) -> Vec<IpsecException> {
    let mut out: Vec<IpsecException> = Vec::new();
    // Each name's first line: a lookup, not a pass over the rows before.
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for sr in raw {
        let r = sr.get_ref();
        let line = d.line(&sr.span());
        let name = r.name.get_ref().trim();
        if name.is_empty() {
            d.error(&r.name.span(), "empty IPsec rule name", None);
            continue;
        }
        if let Some(first) = first_line.get(name) {
            d.error(
                &r.name.span(),
                format!("duplicate IPsec rule `{name}`, first at line {first}"),
                None,
            );
            continue;
        }
        first_line.insert(name, line);
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

/// The edition a word names, or an error at the word.
pub(super) fn edition_of(d: &mut Diags<'_>, word: &Spanned<String>) -> Option<Edition> {
    let e = Edition::from_word(word.get_ref());
    if e.is_none() {
        d.error(
            &word.span(),
            format!("unknown edition `{}`", word.get_ref()),
            Some(format!(
                "expected one of: {}",
                Edition::ALL
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
    }
    e
}

pub(super) fn table_of(d: &mut Diags<'_>, word: &Spanned<String>) -> Option<SeedTable> {
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

pub(super) fn valid_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The first roles of the catalog by name, enough to spot a typo without
/// printing thousands of names per error.
pub(super) fn known_roles_hint(roles: &[RoleDef]) -> String {
    const NAMED: usize = 40;
    let names: Vec<&str> = roles.iter().take(NAMED).map(|r| r.id.as_str()).collect();
    match roles.len().saturating_sub(NAMED) {
        0 => format!("known roles: {}", names.join(", ")),
        more => format!("known roles: {}, ... ({more} more)", names.join(", ")),
    }
}

/// Also `run`'s message when the counter slots run out (`PolicyError::TooManyRules`).
pub(super) fn too_many_rules() -> String {
    format!("more than {MAX_RULE_ENTRIES} distinct rules; the counter table is full")
}

const TOO_MANY_RULES_HINT: &str = "each protocol of a destination rule takes a counter slot (`both` takes two); the limits of a catalog are in docs/catalog.md";

/// For each role, the root roles (those no role includes) whose resolved
/// set contains it, as a bitset of `words` words per role. Two rules can meet
/// on a host through inclusion exactly when their roles share a root.
/// Filled in topological order, includers first, so each include is followed
/// once (memoised, not a walk per role). Cycles were refused before.
struct Reach {
    words: usize,
    bits: Vec<u64>,
}

impl Reach {
    fn new(roles: &[RoleDef]) -> Reach {
        let index: HashMap<&str, usize> = roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        let edges: Vec<Vec<usize>> = roles
            .iter()
            .map(|r| {
                r.includes
                    .iter()
                    .filter_map(|i| index.get(i.as_str()).copied())
                    .collect()
            })
            .collect();
        let mut includers = vec![0usize; roles.len()];
        for &to in edges.iter().flatten() {
            includers[to] += 1;
        }
        let roots: Vec<usize> = (0..roles.len()).filter(|&i| includers[i] == 0).collect();
        let words = roots.len().div_ceil(64).max(1);
        let mut bits = vec![0u64; roles.len() * words];
        for (k, &root) in roots.iter().enumerate() {
            bits[root * words + k / 64] |= 1 << (k % 64);
        }
        // Kahn's order: a role is done once every role including it is.
        let mut ready = roots;
        while let Some(from) = ready.pop() {
            for &to in &edges[from] {
                for w in 0..words {
                    bits[to * words + w] |= bits[from * words + w];
                }
                includers[to] -= 1;
                if includers[to] == 0 {
                    ready.push(to);
                }
            }
        }
        Reach { words, bits }
    }

    fn share_a_root(&self, a: usize, b: usize) -> bool {
        let (x, y) = (
            &self.bits[a * self.words..(a + 1) * self.words],
            &self.bits[b * self.words..(b + 1) * self.words],
        );
        x.iter().zip(y).any(|(p, q)| p & q != 0)
    }
}

/// Overlapping destination rules that can meet on a host through inclusion
/// (both in some role's resolved set), once per pair: the first
/// [`MAX_OVERLAPS_LISTED`] by port, then a count of all. One sweep over the
/// rules sorted by start: each rule meets only those that start before it
/// ends, so the work is the overlaps (at most [`MAX_OVERLAP_COMPARISONS`]),
/// not a pass per role.
fn overlap_warnings(d: &mut Diags<'_>, catalog: &Catalog) {
    let index: HashMap<&str, usize> = catalog
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let reach = Reach::new(&catalog.roles);
    let rules = &catalog.rules;
    let role_of: Vec<usize> = rules
        .iter()
        .map(|r| index.get(r.role.as_str()).copied().unwrap_or(0))
        .collect();
    let mut by_start: Vec<usize> = (0..rules.len())
        .filter(|&i| rules[i].side == MatchSide::Destination)
        .collect();
    by_start.sort_by_key(|&i| (rules[i].port_start, i));

    let mut listed: Vec<(usize, usize, Vec<Protocol>)> = Vec::new();
    let mut count = 0usize;
    let mut comparisons = 0usize;
    let mut complete = true;
    'sweep: for (n, &x) in by_start.iter().enumerate() {
        let end = rules[x].port_end;
        for &y in by_start[n + 1..]
            .iter()
            .take_while(|&&y| rules[y].port_start <= end)
        {
            comparisons += 1;
            if comparisons > MAX_OVERLAP_COMPARISONS {
                complete = false;
                break 'sweep;
            }
            let (i, j) = (x.min(y), x.max(y));
            let (a, b) = (&rules[i], &rules[j]);
            // An inbound and an outbound rule on one port never meet: one
            // matches packets to the role's address, the other packets from it.
            if a.direction != b.direction {
                continue;
            }
            if !a.protocols.iter().any(|p| b.protocols.contains(p)) {
                continue;
            }
            if role_of[i] != role_of[j] && !reach.share_a_root(role_of[i], role_of[j]) {
                continue;
            }
            count += 1;
            if listed.len() < MAX_OVERLAPS_LISTED {
                let shared = a
                    .protocols
                    .iter()
                    .filter(|p| b.protocols.contains(p))
                    .copied()
                    .collect();
                listed.push((i, j, shared));
            }
        }
    }
    let shown = listed.len();
    for (i, j, protocols) in listed {
        let (a, b) = (&rules[i], &rules[j]);
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
    if count > shown || !complete {
        let total = if complete {
            format!("{count} overlapping rule pairs in all")
        } else {
            format!(
                "more than {count} overlapping rule pairs (counting stopped after {MAX_OVERLAP_COMPARISONS} comparisons)"
            )
        };
        d.push_pending(Pending {
            offset: None,
            severity: Severity::Warning,
            message: format!("{total}; the first {shown} by port are listed"),
            elsewhere: None,
            hint: Some(
                "overlaps are settled by precedence (the narrower range, then the earlier rule); see docs/catalog.md"
                    .into(),
            ),
        });
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
