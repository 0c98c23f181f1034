//! Derived catalogs: `base = "2015"` and the rows and roles a later release
//! removed, each with the document that says so.
//!
//! Skype for Business Server 2019 (and Subscription Edition, which follows
//! it) keeps the 2015 port tables except for the features it removed, so its
//! catalog is the 2015 one minus a short, sourced list, not a second copy of
//! 1,500 lines that could drift from the first. Every `[[remove]]` must
//! match exactly one rule of the base, so a change to the base that a
//! removal no longer matches fails `catalog check` (and the tests) instead
//! of leaving a removed row in force.

use std::{collections::HashMap, ops::Range};

use serde::Deserialize;
use toml::Spanned;

use super::{
    model::{Catalog, CatalogError, Diagnostic, Direction, Edition, Protocol},
    parse::{Diags, edition_of, parse_ports, table_of},
};

/// One rule of the base that the derived catalog drops.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemove {
    role: Spanned<String>,
    service: Spanned<String>,
    protocol: Spanned<String>,
    ports: Spanned<toml::Value>,
    table: Spanned<String>,
    direction: Option<Spanned<String>>,
    /// The document that says the row is gone (its path in Microsoft's repository).
    source: Spanned<String>,
    note: Spanned<String>,
}

/// A role of the base that the derived catalog drops (after its rules).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemoveRole {
    id: Spanned<String>,
    source: Spanned<String>,
    note: Spanned<String>,
}

/// What a derived catalog's file holds, as the parser read it.
pub(super) struct Parts<'r> {
    pub(super) edition: Option<Edition>,
    pub(super) base: &'r Spanned<String>,
    pub(super) remove: &'r [Spanned<RawRemove>],
    pub(super) remove_role: &'r [Spanned<RawRemoveRole>],
    /// The first `[[role]]`, `[[rule]]`, `[[ipsec]]` or `[[addresses]]` of its own, if any.
    pub(super) own: Option<Range<usize>>,
    pub(super) settings: bool,
}

const REMOVE_HINT: &str = "a derived catalog lists the rows it removes from its base; to add rows, write a whole catalog (docs/catalog.md, \"Editions\")";

pub(super) fn derive(
    mut d: Diags<'_>,
    origin: &str,
    parts: Parts<'_>,
) -> Result<(Catalog, Vec<Diagnostic>), CatalogError> {
    if let Some(span) = &parts.own {
        d.error(
            span,
            "a catalog with `base` has no [[role]], [[rule]], [[ipsec]] or [[addresses]] of its own",
            Some(REMOVE_HINT.into()),
        );
    }
    if parts.settings {
        d.error(
            &parts.base.span(),
            "a catalog with `base` has no [settings]: it keeps its base's",
            Some("narrow the media range with `run --client-media-ports`".into()),
        );
    }
    let Some(base) = edition_of(&mut d, parts.base) else {
        return Err(CatalogError {
            diagnostics: d.into_sorted(),
        });
    };
    let mut catalog = Catalog::edition(base);
    catalog.origin = origin.to_string();
    catalog.edition = parts.edition;

    // Which rules go: index into the base's rules, and the line that removes it.
    let mut removed: HashMap<usize, usize> = HashMap::new();
    for sr in parts.remove {
        let r = sr.get_ref();
        let line = d.line(&sr.span());
        require_text(
            &mut d,
            &r.source,
            "source",
            "the path of the document that removes the row",
        );
        require_text(
            &mut d,
            &r.note,
            "note",
            "what the document says about the row",
        );
        let protocols = match Protocol::from_catalog_word(r.protocol.get_ref()) {
            Some(protocols) => protocols,
            None => {
                d.error(
                    &r.protocol.span(),
                    format!("unknown protocol `{}`", r.protocol.get_ref()),
                    Some("expected `tcp`, `udp` or `both`, as the base's rule says".into()),
                );
                continue;
            }
        };
        let ports = match parse_ports(r.ports.get_ref()) {
            Ok(p) => p,
            Err(message) => {
                d.error(&r.ports.span(), message, None);
                continue;
            }
        };
        let Some(table) = table_of(&mut d, &r.table) else {
            continue;
        };
        let direction = match &r.direction {
            None => Direction::Inbound,
            Some(word) => match Direction::from_word(word.get_ref()) {
                Some(direction) => direction,
                None => {
                    d.error(
                        &word.span(),
                        format!("unknown direction `{}`", word.get_ref()),
                        Some("expected `inbound` or `outbound`".into()),
                    );
                    continue;
                }
            },
        };
        let role = r.role.get_ref().as_str();
        let service = r.service.get_ref().trim();
        let found = catalog.rules.iter().position(|x| {
            x.role == role
                && x.service == service
                && x.protocols == protocols
                && x.declared == ports
                && x.direction == direction
                && x.table == table
        });
        match found {
            None => d.error(
                &sr.span(),
                format!(
                    "no rule of the {base} catalog is {role} {direction} {} {} `{service}` (table {table})",
                    r.protocol.get_ref(),
                    super::model::ports_text(ports.0, ports.1),
                ),
                Some(format!(
                    "`portguard catalog show --edition {base} --role {role}` lists that role's rules"
                )),
            ),
            Some(i) => {
                if let Some(first) = removed.insert(i, line) {
                    d.error(
                        &sr.span(),
                        format!("this rule is removed already, at line {first}"),
                        None,
                    );
                }
            }
        }
    }

    let mut roles_removed: Vec<String> = Vec::new();
    for sr in parts.remove_role {
        let r = sr.get_ref();
        require_text(
            &mut d,
            &r.source,
            "source",
            "the path of the document that removes the role",
        );
        require_text(
            &mut d,
            &r.note,
            "note",
            "what the document says about the role",
        );
        let id = r.id.get_ref().as_str();
        if catalog.role(id).is_none() {
            d.error(
                &r.id.span(),
                format!("the {base} catalog has no role `{id}`"),
                None,
            );
            continue;
        }
        let left = catalog
            .rules
            .iter()
            .enumerate()
            .filter(|(i, x)| x.role == id && !removed.contains_key(i))
            .count();
        if left > 0 {
            d.error(
                &r.id.span(),
                format!("role `{id}` keeps {left} rule(s) of the {base} catalog"),
                Some(
                    "list each of its rules in a [[remove]] first, so that the removed rows are written down"
                        .into(),
                ),
            );
        }
        for includer in catalog
            .roles
            .iter()
            .filter(|x| x.includes.iter().any(|i| i == id))
        {
            d.error(
                &r.id.span(),
                format!("role `{}` includes `{id}`", includer.id),
                Some("remove the including role too, or keep this one".into()),
            );
        }
        roles_removed.push(id.to_string());
    }

    if d.has_errors() {
        return Err(CatalogError {
            diagnostics: d.into_sorted(),
        });
    }
    let mut index = 0;
    catalog.rules.retain(|_| {
        let keep = !removed.contains_key(&index);
        index += 1;
        keep
    });
    catalog.roles.retain(|r| !roles_removed.contains(&r.id));
    Ok((catalog, d.into_sorted()))
}

fn require_text(d: &mut Diags<'_>, value: &Spanned<String>, key: &str, what: &str) {
    if value.get_ref().trim().is_empty() {
        d.error(
            &value.span(),
            format!("empty {key}"),
            Some(format!("give {what}")),
        );
    }
}
