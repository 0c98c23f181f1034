//! `portguard catalog check|show|export`.

use std::{
    io::{self, Write as _},
    path::Path,
};

pub use crate::catalog::show::{ShowFormat, ShowTable};
use crate::{
    catalog::{Catalog, CatalogError, Direction, MgmtAllowance, count_findings, nft, show},
    exit,
};

/// Validates a catalog file: every error and warning with file:line:col,
/// then a summary. 2 on any error (an unreadable file included), else 0.
pub fn check(path: &Path) -> u8 {
    let (diagnostics, ok_summary) = match Catalog::load(path) {
        Ok((catalog, warnings)) => {
            let (_, warning_count) = count_findings(&warnings);
            let outbound = catalog
                .rules
                .iter()
                .filter(|r| r.direction == Direction::Outbound)
                .count();
            let summary = format!(
                "{}: ok: {} roles, {} rules ({} inbound, {outbound} outbound), {} IPsec exceptions, {warning_count} warning{}",
                path.display(),
                catalog.roles.len(),
                catalog.rules.len(),
                catalog.rules.len() - outbound,
                catalog.ipsec.len(),
                if warning_count == 1 { "" } else { "s" }
            );
            (warnings, Some(summary))
        }
        Err(e) => (e.diagnostics, None),
    };
    let mut err = io::stderr().lock();
    for d in &diagnostics {
        let _ = writeln!(err, "{d}");
    }
    match ok_summary {
        Some(summary) => {
            println!("{summary}");
            exit::OK
        }
        None => {
            let (errors, warnings) = count_findings(&diagnostics);
            let _ = writeln!(
                err,
                "{}: invalid: {errors} error{}, {warnings} warning{}",
                path.display(),
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" }
            );
            exit::USAGE
        }
    }
}

/// Prints the rules (of `role`, inclusions resolved, or every role's own) or
/// the IPsec exceptions. 2 for an unknown role, 1 if stdout fails.
pub fn show(catalog: &Catalog, role: Option<&str>, format: ShowFormat, table: ShowTable) -> u8 {
    let text = match table {
        ShowTable::Ipsec => show::render_ipsec(catalog, format),
        ShowTable::Rules => match show::rows(catalog, role) {
            Ok(rows) => show::render_rules(catalog, &rows, role, format),
            Err(e) => {
                eprintln!("portguard catalog show: {e}");
                return exit::USAGE;
            }
        },
    };
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("portguard catalog show: cannot write to stdout: {e}");
            exit::FAILURE
        }
    }
}

/// The roles' policy as an nftables ruleset.
pub fn export_nft(
    catalog: &Catalog,
    roles: &[String],
    mgmt: &[MgmtAllowance],
) -> Result<String, CatalogError> {
    nft::export(catalog, roles, mgmt)
}

/// The policy with `--profile`s (a host's, or an appliance's with its
/// forward chain) as an nftables ruleset.
pub fn export_nft_profiles(
    catalog: &Catalog,
    placement: nft::Placement,
    roles: &[String],
    profiles: &[nft::ProfileSpec],
    mgmt: &[MgmtAllowance],
) -> Result<String, CatalogError> {
    nft::export_profiles(catalog, placement, roles, profiles, mgmt)
}
