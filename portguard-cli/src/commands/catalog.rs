//! `portguard catalog check|show|export|diff|import-endpoints`.

use std::{
    io::{self, Write as _},
    path::Path,
};

mod diff;
mod import;
mod show;

use portguard::{
    catalog::{
        AddressesArg, Catalog, CatalogError, Diagnostic, Direction, Edition, count_findings, nft,
    },
    daemon::read_catalog,
    exit,
    policy::{self, Mgmt, Placement, PolicySpec, ProfileArg},
};

pub use self::show::{ShowFormat, ShowTable};
use crate::cli::CatalogCommand;

/// Validates a catalog file (or an embedded edition's): every error and
/// warning with file:line:col, then a summary. 2 on any error (an
/// unreadable file included), else 0.
pub fn check(path: Option<&Path>, edition: Option<Edition>) -> u8 {
    let (name, loaded): (String, Result<(Catalog, Vec<Diagnostic>), CatalogError>) =
        match (path, edition) {
            (Some(p), _) => (p.display().to_string(), Catalog::load(p)),
            (None, e) => {
                let e = e.unwrap_or(Edition::Sfb2015);
                (
                    format!("{} (embedded)", e.embedded_name()),
                    Catalog::parse(e.embedded_text(), e.embedded_name()),
                )
            }
        };
    let (diagnostics, ok_summary) = match loaded {
        Ok((catalog, warnings)) => {
            let (_, warning_count) = count_findings(&warnings);
            let outbound = catalog
                .rules
                .iter()
                .filter(|r| r.direction == Direction::Outbound)
                .count();
            let summary = format!(
                "{name}: ok: {} roles, {} rules ({} inbound, {outbound} outbound), {} IPsec exceptions, {} address sets, {warning_count} warning{}{}",
                catalog.roles.len(),
                catalog.rules.len(),
                catalog.rules.len() - outbound,
                catalog.ipsec.len(),
                catalog.addresses.len(),
                if warning_count == 1 { "" } else { "s" },
                catalog
                    .edition
                    .map(|e| format!(" (edition {e})"))
                    .unwrap_or_default(),
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
                "{name}: invalid: {errors} error{}, {warnings} warning{}",
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
        ShowTable::Addresses => show::render_sets(catalog, format),
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

/// `portguard catalog check|show|export`.
pub fn catalog(c: CatalogCommand) -> u8 {
    match c {
        CatalogCommand::Check { file, edition } => check(file.as_deref(), edition),
        CatalogCommand::Show {
            role,
            format,
            table,
            catalog,
            edition,
            addresses,
        } => match load_catalog(catalog.as_deref(), edition, &addresses) {
            Ok(cat) => show(&cat, role.as_deref(), format, table),
            Err(code) => code,
        },
        CatalogCommand::Export {
            format: _,
            role,
            catalog,
            edition,
            mgmt,
            no_default_mgmt,
            appliance,
            profile,
            addresses,
        } => match load_catalog(catalog.as_deref(), edition, &addresses) {
            Ok(cat) => export(&cat, role, mgmt, no_default_mgmt, appliance, profile),
            Err(code) => code,
        },
        CatalogCommand::Diff { a, b } => diff(&a, &b),
        CatalogCommand::ImportEndpoints {
            file,
            service_area,
            id,
            version,
        } => import::import_endpoints(&file, &service_area, &id, version.as_deref()),
    }
}

/// Prints what differs between A and B; 0 whether or not they differ, 2
/// when either does not load.
fn diff(a: &str, b: &str) -> u8 {
    let (old, new) = match (diff::load(a), diff::load(b)) {
        (Ok(old), Ok(new)) => (old, new),
        (x, y) => {
            for e in [x.err(), y.err()].into_iter().flatten() {
                eprintln!("{e}");
            }
            eprintln!("portguard catalog diff: A and B are each 2015, 2019 or a catalog file");
            return exit::USAGE;
        }
    };
    write_out("diff", &diff::render(a, &old, b, &new))
}

/// Writes `text` to stdout: 0, or 1 when stdout fails (a closed pipe is the
/// reader's choice, not a failure).
fn write_out(command: &str, text: &str) -> u8 {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("portguard catalog {command}: cannot write to stdout: {e}");
            exit::FAILURE
        }
    }
}

/// The catalog, with `--addresses` applied as `run` applies it.
fn load_catalog(
    path: Option<&Path>,
    edition: Edition,
    addresses: &[AddressesArg],
) -> Result<Catalog, u8> {
    let catalog = read_catalog(path, edition).map_err(|e| {
        eprintln!("{e}");
        exit::USAGE
    })?;
    if addresses.is_empty() {
        return Ok(catalog);
    }
    match catalog.with_addresses(addresses) {
        Ok((catalog, warnings)) => {
            for w in warnings {
                eprintln!("{w}");
            }
            Ok(catalog)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(exit::USAGE)
        }
    }
}

/// Prints the policy of `role` (every role when absent on a host; with
/// `--profile`s or `--appliance` the default profile, none when absent) as
/// an nftables ruleset.
fn export(
    catalog: &Catalog,
    role: Vec<String>,
    mgmt: Vec<Mgmt>,
    no_default_mgmt: bool,
    appliance: bool,
    profiles: Vec<ProfileArg>,
) -> u8 {
    // In appliance mode --role names the box's own roles, and none is a
    // choice (the essentials and the guard only), not "every role".
    let roles = if role.is_empty() && !appliance && profiles.is_empty() {
        catalog.role_ids().iter().map(|r| r.to_string()).collect()
    } else {
        role
    };
    let spec = PolicySpec {
        default_roles: (!roles.is_empty()).then_some(roles),
        profiles,
        mgmt: Mgmt::with_default(!no_default_mgmt, &mgmt),
        placement: if appliance {
            Placement::Appliance
        } else {
            Placement::Host
        },
        ..PolicySpec::default()
    };
    match policy::resolve(catalog, &spec) {
        Ok(resolved) => {
            print!("{}", nft::export(&resolved));
            exit::OK
        }
        Err(e) => {
            eprintln!("portguard catalog export: {e}");
            exit::USAGE
        }
    }
}
