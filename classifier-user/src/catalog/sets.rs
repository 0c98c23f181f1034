//! Address sets: `[[addresses]]` (inline `cidrs` and/or a `file` beside the
//! catalog), the `peers` a rule names, and `run --addresses`, which replaces
//! a set's contents for a run.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use toml::Spanned;

use super::{
    model::{
        AddressSet, AddressesArg, Catalog, CatalogError, Cidr, Diagnostic, MatchSide, SetSource,
        Severity,
    },
    parse::{Diags, Pending, RawAddresses, valid_id},
    read::{MAX_CATALOG_BYTES, read_bounded},
};

/// Address sets a catalog may define.
pub(crate) const MAX_SETS: usize = 1_024;

/// Prefixes all the sets of a catalog may hold together (inline, from files
/// and from `--addresses`): Microsoft 365's published ranges are a few
/// hundred, and the packet path's peer table holds each prefix once per rule
/// that names its set.
pub(crate) const MAX_SET_CIDRS: usize = 16_384;

const SETS_HINT: &str = "address sets are described in docs/catalog.md, \"Address sets\"";

pub(super) fn validate_sets(d: &mut Diags<'_>, raw: &[Spanned<RawAddresses>]) -> Vec<AddressSet> {
    let mut sets: Vec<AddressSet> = Vec::new();
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut total = 0usize;
    if let Some(extra) = raw.get(MAX_SETS) {
        d.error(
            &extra.span(),
            format!("more than {MAX_SETS} address sets"),
            Some("the limits of a catalog are in docs/catalog.md".into()),
        );
        return sets;
    }
    for sr in raw {
        let r = sr.get_ref();
        let line = d.line(&sr.span());
        let id = r.id.get_ref().as_str();
        if !valid_id(id) {
            d.error(
                &r.id.span(),
                format!("invalid address set id `{id}`"),
                Some(
                    "set ids are lowercase letters, digits and `-`, starting with a letter".into(),
                ),
            );
            continue;
        }
        if let Some(first) = first_line.get(id) {
            d.error(
                &r.id.span(),
                format!("duplicate address set `{id}`, first at line {first}"),
                None,
            );
            continue;
        }
        first_line.insert(id, line);
        let mut cidrs = Vec::new();
        for c in &r.cidrs {
            match Cidr::parse(c.get_ref()) {
                Ok(cidr) => cidrs.push(cidr),
                Err(message) => d.error(&c.span(), message, Some(SETS_HINT.into())),
            }
        }
        if let Some(file) = &r.file {
            cidrs.extend(read_set_file(d, file));
        }
        cidrs.sort();
        cidrs.dedup();
        total += cidrs.len();
        if total > MAX_SET_CIDRS {
            d.error(
                &sr.span(),
                format!("more than {MAX_SET_CIDRS} prefixes in the address sets"),
                Some("the limits of a catalog are in docs/catalog.md".into()),
            );
            break;
        }
        sets.push(AddressSet {
            id: id.to_string(),
            cidrs,
            file: r.file.as_ref().map(|f| f.get_ref().clone()),
            note: r
                .note
                .as_ref()
                .map(|n| n.get_ref().trim().to_string())
                .unwrap_or_default(),
            source: SetSource::Catalog,
            line,
        });
    }
    sets
}

/// The prefixes of a set's `file`: one a line, `#` starts a comment. The
/// path is relative to the catalog file's directory (for the embedded
/// catalog, to the working directory); it is read like a catalog (a regular
/// file of bounded size). Findings name the set file and its line.
fn read_set_file(d: &mut Diags<'_>, file: &Spanned<String>) -> Vec<Cidr> {
    let written = Path::new(file.get_ref());
    let path = if written.is_absolute() {
        written.to_path_buf()
    } else {
        Path::new(d.origin)
            .parent()
            .unwrap_or(Path::new(""))
            .join(written)
    };
    let bytes = match read_bounded(&path, MAX_CATALOG_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => {
            d.error(
                &file.span(),
                format!("address set file {}: {e}", path.display()),
                Some("`file` is relative to the catalog file's directory".into()),
            );
            return Vec::new();
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        d.error(
            &file.span(),
            format!("address set file {} is not UTF-8", path.display()),
            None,
        );
        return Vec::new();
    };
    let origin = path.display().to_string();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match Cidr::parse(entry) {
            Ok(c) => out.push(c),
            Err(message) => d.push_pending(Pending {
                offset: Some(file.span().start),
                severity: Severity::Error,
                message,
                hint: Some("one CIDR a line; `#` starts a comment".into()),
                elsewhere: Some((origin.clone(), n + 1)),
            }),
        }
        if out.len() > MAX_SET_CIDRS {
            d.error(
                &file.span(),
                format!(
                    "address set file {} has more than {MAX_SET_CIDRS} prefixes",
                    path.display()
                ),
                None,
            );
            break;
        }
    }
    out
}

/// A rule's `peers`: a set id or a list of them, each a known set. An empty
/// set is a warning: the rule then matches nothing.
pub(super) fn rule_peers(
    d: &mut Diags<'_>,
    value: &Spanned<toml::Value>,
    sets: &[AddressSet],
    side: MatchSide,
) -> Vec<String> {
    let span = value.span();
    let ids: Vec<&str> = match value.get_ref() {
        toml::Value::String(s) => vec![s.as_str()],
        toml::Value::Array(items) => {
            let ids: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
            match ids {
                Some(ids) if !ids.is_empty() => ids,
                _ => {
                    d.error(
                        &span,
                        "`peers` is a set id or a non-empty list of set ids",
                        Some(SETS_HINT.into()),
                    );
                    return Vec::new();
                }
            }
        }
        other => {
            d.error(
                &span,
                format!(
                    "`peers` is a set id or a list of set ids, not a {}",
                    other.type_str()
                ),
                Some(SETS_HINT.into()),
            );
            return Vec::new();
        }
    };
    if side == MatchSide::Source {
        d.error(
            &span,
            "a `match = \"source\"` rule compiles to nothing, so `peers` would not narrow it",
            Some("drop `peers`, or make the rule match the destination port".into()),
        );
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        match sets.iter().find(|s| s.id == id) {
            None => d.error(
                &span,
                format!("unknown address set `{id}` in peers"),
                Some(known_sets_hint(sets)),
            ),
            Some(_) => {
                if !out.iter().any(|o| o == id) {
                    out.push(id.to_string());
                }
            }
        }
    }
    if !out.is_empty() && peer_cidrs_in(sets, &out).is_empty() {
        d.warning(
            &span,
            empty_message(&out),
            Some(
                "fill the set in the catalog or with `run --addresses ID=CIDR,...`; an empty set admits no peer"
                    .into(),
            ),
        );
    }
    out
}

fn empty_message(ids: &[String]) -> String {
    format!(
        "peer set{} {} {} empty: this rule matches nothing",
        if ids.len() == 1 { "" } else { "s" },
        ids.iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", "),
        if ids.len() == 1 { "is" } else { "are" }
    )
}

fn known_sets_hint(sets: &[AddressSet]) -> String {
    const NAMED: usize = 40;
    if sets.is_empty() {
        return "the catalog defines no `[[addresses]]` set".into();
    }
    let names: Vec<&str> = sets.iter().take(NAMED).map(|s| s.id.as_str()).collect();
    match sets.len().saturating_sub(NAMED) {
        0 => format!("known sets: {}", names.join(", ")),
        more => format!("known sets: {}, ... ({more} more)", names.join(", ")),
    }
}

/// The union of the named sets' prefixes, sorted, each once.
pub(super) fn peer_cidrs_in(sets: &[AddressSet], ids: &[String]) -> Vec<Cidr> {
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut out: Vec<Cidr> = sets
        .iter()
        .filter(|s| wanted.contains(s.id.as_str()))
        .flat_map(|s| s.cidrs.iter().copied())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn flag_error(message: String, hint: Option<String>) -> Diagnostic {
    Diagnostic {
        origin: "--addresses".into(),
        line: 0,
        column: 0,
        severity: Severity::Error,
        message,
        hint,
    }
}

impl Catalog {
    /// The set with this id.
    pub fn address_set(&self, id: &str) -> Option<&AddressSet> {
        self.addresses.iter().find(|s| s.id == id)
    }

    /// The prefixes a rule naming `peers` admits (the union of the sets).
    pub fn peer_cidrs(&self, peers: &[String]) -> Vec<Cidr> {
        peer_cidrs_in(&self.addresses, peers)
    }

    /// `run --addresses`: each named set's contents replaced by the flag's.
    /// `Ok` carries a warning for every rule whose peers are now empty.
    pub fn with_addresses(
        &self,
        args: &[AddressesArg],
    ) -> Result<(Catalog, Vec<Diagnostic>), CatalogError> {
        let mut c = self.clone();
        let mut errors = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for a in args {
            if !seen.insert(a.id.as_str()) {
                errors.push(flag_error(
                    format!("set `{}` is given twice", a.id),
                    Some("give each set once, with all its prefixes: ID=CIDR,CIDR".into()),
                ));
                continue;
            }
            match c.addresses.iter_mut().find(|s| s.id == a.id) {
                Some(set) => {
                    set.cidrs.clone_from(&a.cidrs);
                    set.source = SetSource::Flag;
                }
                None => errors.push(flag_error(
                    format!("unknown address set `{}`", a.id),
                    Some(known_sets_hint(&self.addresses)),
                )),
            }
        }
        let total: usize = c.addresses.iter().map(|s| s.cidrs.len()).sum();
        if total > MAX_SET_CIDRS {
            errors.push(flag_error(
                format!("more than {MAX_SET_CIDRS} prefixes in the address sets"),
                None,
            ));
        }
        if !errors.is_empty() {
            return Err(CatalogError {
                diagnostics: errors,
            });
        }
        let warnings = c
            .rules
            .iter()
            .filter(|r| !r.peers.is_empty() && c.peer_cidrs(&r.peers).is_empty())
            .map(|r| Diagnostic {
                origin: "--addresses".into(),
                line: 0,
                column: 0,
                severity: Severity::Warning,
                message: format!(
                    "{} {} ({}, {}, line {} of {}): {}",
                    r.direction,
                    super::model::ports_text(r.port_start, r.port_end),
                    r.role,
                    r.service,
                    r.line,
                    c.origin,
                    empty_message(&r.peers)
                ),
                hint: None,
            })
            .collect();
        Ok((c, warnings))
    }
}
