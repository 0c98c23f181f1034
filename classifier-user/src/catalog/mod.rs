//! The port catalog: Microsoft's published port tables for Skype for Business
//! Server 2015 (servers, load balancers, clients, Edge Servers, reverse proxy)
//! as TOML, validated with line-accurate diagnostics, with role inclusions
//! resolved and overlaps settled; and the 2019 edition, derived from it.
//!
//! The format and every decision behind it are in `docs/catalog.md`.

mod derive;
#[cfg(test)]
mod edition_tests;
#[cfg(test)]
mod hostile_tests;
mod model;
pub mod nft;
mod parse;
mod read;
mod resolve;
mod sets;
#[cfg(test)]
mod sets_tests;
#[cfg(test)]
mod tests;

use std::{path::Path, sync::OnceLock};

pub(crate) use model::ports_text;
pub use model::{
    AddressSet, AddressesArg, Catalog, CatalogError, Cidr, Diagnostic, Direction, EDGE_DOCUMENT,
    Edition, EffectiveRule, HYBRID_DOCUMENT, IpsecException, M365_ENDPOINTS_DOCUMENT, MatchSide,
    Payload, PortAssignment, Protocol, REVERSE_PROXY_DOCUMENT, RoleDef, Rule,
    SERVER_PORTS_DOCUMENT, SeedTable, SetSource, Severity, count_findings,
};
pub(crate) use parse::MAX_DIAGNOSTICS;
#[cfg(test)]
pub(crate) use parse::{MAX_OVERLAPS_LISTED, MAX_ROLES, MAX_RULE_ENTRIES};
pub use read::{MAX_CATALOG_BYTES, ReadError, read_bounded};
#[cfg(test)]
use resolve::assign_ports;
pub(crate) use resolve::assign_ports_in;

/// The origin name used in diagnostics for the embedded (2015) catalog.
pub(crate) const EMBEDDED_NAME: &str = "catalog/sfb2015.toml";
/// The origin name of the embedded 2019 catalog (derived from the 2015 one).
pub(crate) const EMBEDDED_2019_NAME: &str = "catalog/sfb2019.toml";

/// The floor for the client media range (ClientMediaPortRange) that the server
/// ports document states: at least 20 ports.
pub(crate) const MIN_CLIENT_MEDIA_PORTS: u32 = 20;

const EMBEDDED_TEXT: &str = include_str!("../../../catalog/sfb2015.toml");
const EMBEDDED_2019_TEXT: &str = include_str!("../../../catalog/sfb2019.toml");

impl Edition {
    /// The file the edition's embedded catalog was built from.
    pub fn embedded_name(self) -> &'static str {
        match self {
            Edition::Sfb2015 => EMBEDDED_NAME,
            Edition::Sfb2019 => EMBEDDED_2019_NAME,
        }
    }

    /// The text of the edition's embedded catalog (2019's is derived: the
    /// rows it removes from 2015).
    pub fn embedded_text(self) -> &'static str {
        match self {
            Edition::Sfb2015 => EMBEDDED_TEXT,
            Edition::Sfb2019 => EMBEDDED_2019_TEXT,
        }
    }
}

impl Catalog {
    /// Parses catalog text; `Ok` carries the warnings (overlaps, ...).
    pub fn parse(text: &str, origin: &str) -> Result<(Catalog, Vec<Diagnostic>), CatalogError> {
        parse::parse(text, origin)
    }

    /// Like [`Catalog::parse`], for bytes that may not be UTF-8.
    pub fn from_bytes(
        bytes: &[u8],
        origin: &str,
    ) -> Result<(Catalog, Vec<Diagnostic>), CatalogError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text, origin),
            Err(e) => {
                let good = &bytes[..e.valid_up_to()];
                let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
                let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                // The prefix is valid UTF-8 by construction, so this counts characters.
                let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
                let bad = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
                Err(CatalogError::single(Diagnostic {
                    origin: origin.to_string(),
                    line,
                    column,
                    severity: Severity::Error,
                    message: format!("not UTF-8: invalid byte 0x{bad:02X}"),
                    hint: Some(
                        "a catalog is TOML, which must be UTF-8; re-save the file as UTF-8".into(),
                    ),
                }))
            }
        }
    }

    /// Reads and parses a catalog file: a regular file (or a symlink to
    /// one) of at most [`MAX_CATALOG_BYTES`]; see [`read_bounded`].
    pub fn load(path: &Path) -> Result<(Catalog, Vec<Diagnostic>), CatalogError> {
        let origin = path.display().to_string();
        match read_bounded(path, MAX_CATALOG_BYTES) {
            Ok(bytes) => Self::from_bytes(&bytes, &origin),
            Err(e) => {
                let hint = match e {
                    ReadError::NotRegular(_) => {
                        Some("a catalog is a regular TOML file (a symlink to one is fine)".into())
                    }
                    ReadError::TooLarge { .. } | ReadError::Grew { .. } => Some(
                        "the default catalog is about 34 KiB; the limits are in docs/catalog.md"
                            .into(),
                    ),
                    ReadError::Io(_) => None,
                };
                Err(CatalogError::single(Diagnostic {
                    origin,
                    line: 0,
                    column: 0,
                    severity: Severity::Error,
                    message: e.to_string(),
                    hint,
                }))
            }
        }
    }

    /// The default catalog, compiled into the binary: the 2015 edition.
    pub fn embedded() -> Catalog {
        Self::edition(Edition::Sfb2015)
    }

    /// An edition's catalog, compiled into the binary.
    pub fn edition(edition: Edition) -> Catalog {
        static EMBEDDED: [OnceLock<Catalog>; Edition::ALL.len()] =
            [const { OnceLock::new() }; Edition::ALL.len()];
        let slot = match edition {
            Edition::Sfb2015 => &EMBEDDED[0],
            Edition::Sfb2019 => &EMBEDDED[1],
        };
        slot.get_or_init(
            || match Self::parse(edition.embedded_text(), edition.embedded_name()) {
                Ok((catalog, _warnings)) => catalog,
                // Unreachable in a tested build: `tests::embedded_parses_without_errors`
                // and `edition_tests` guard it.
                Err(e) => panic!("the embedded {edition} catalog is invalid:\n{e}"),
            },
        )
        .clone()
    }

    /// The text of the embedded catalog, for `catalog check` of the default and for docs.
    pub fn embedded_text() -> &'static str {
        EMBEDDED_TEXT
    }

    /// Role ids in catalog order.
    pub fn role_ids(&self) -> Vec<&str> {
        self.roles.iter().map(|r| r.id.as_str()).collect()
    }

    /// The role with this id.
    pub fn role(&self, id: &str) -> Option<&RoleDef> {
        self.roles.iter().find(|r| r.id == id)
    }

    /// The `--client-media-ports` override: media rules use `start-end`.
    pub fn with_client_media(&self, start: u16, end: u16) -> Result<Catalog, CatalogError> {
        let problem = parse::check_media_range(self, start, end);
        if let Some((message, hint)) = problem {
            return Err(CatalogError::single(Diagnostic {
                origin: "--client-media-ports".into(),
                line: 0,
                column: 0,
                severity: Severity::Error,
                message,
                hint,
            }));
        }
        let mut c = self.clone();
        c.client_media = (start, end);
        for r in c.rules.iter_mut().filter(|r| r.media) {
            r.port_start = start;
            r.port_end = end;
        }
        Ok(c)
    }

    /// Rules of these roles with inclusions resolved, one entry per (rule,
    /// protocol), in catalog order; a role included twice counts once.
    pub fn effective_rules(&self, roles: &[String]) -> Result<Vec<EffectiveRule>, CatalogError> {
        let closure = resolve::closure(self, roles)?;
        let closure: std::collections::HashSet<&str> = closure.iter().map(String::as_str).collect();
        Ok(self
            .rules
            .iter()
            .filter(|r| closure.contains(r.role.as_str()))
            .flat_map(Rule::expand)
            .collect())
    }

    /// A role's own rules (inclusions not resolved), one entry per protocol.
    pub fn own_rules(&self, role: &str) -> Vec<EffectiveRule> {
        self.rules
            .iter()
            .filter(|r| r.role == role)
            .flat_map(Rule::expand)
            .collect()
    }

    /// The roles these roles stand for, inclusions resolved: each requested
    /// role followed by what it includes (depth first), each once.
    pub fn resolve_roles(&self, roles: &[String]) -> Result<Vec<String>, CatalogError> {
        resolve::closure(self, roles)
    }
}
