//! The `portguard` binary: parse flags, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser as _;
use portguard::{
    catalog::Catalog,
    cli::{CatalogCommand, Cli, Command},
    commands, exit,
    policy::Mgmt,
};

fn main() -> ExitCode {
    // clap exits with 2 on bad usage, as the contract wants.
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_target(false)
        .parse_env("PORTGUARD_LOG")
        .init();
    ExitCode::from(match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Stats(args) => commands::stats::stats(args),
        Command::Detach(args) => commands::detach::detach(args),
        Command::Reload(args) => commands::reload::reload(args),
        Command::Events(args) => commands::events::events(args),
        Command::Suggest(args) => commands::suggest::suggest(args),
        Command::Top(args) => commands::top::top(args),
        Command::Catalog(c) => catalog(c),
    })
}

fn load_catalog(path: Option<&std::path::Path>) -> Result<Catalog, u8> {
    portguard::daemon::read_catalog(path).map_err(|e| {
        eprintln!("{e}");
        exit::USAGE
    })
}

fn catalog(c: CatalogCommand) -> u8 {
    match c {
        CatalogCommand::Check { file } => commands::catalog::check(&file),
        CatalogCommand::Show {
            role,
            format,
            table,
            catalog,
        } => match load_catalog(catalog.as_deref()) {
            Ok(cat) => commands::catalog::show(&cat, role.as_deref(), format, table),
            Err(code) => code,
        },
        CatalogCommand::Export {
            format: _,
            role,
            catalog,
            mgmt,
            no_default_mgmt,
            appliance,
            profile,
        } => {
            let cat = match load_catalog(catalog.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut allowances = if no_default_mgmt {
                Vec::new()
            } else {
                Mgmt::defaults()
            };
            allowances.extend(mgmt);
            // In appliance mode --role names the box's own roles, and none is
            // a choice (the essentials and the guard only), not "every role".
            let roles = if role.is_empty() && !appliance && profile.is_empty() {
                cat.role_ids().iter().map(|r| r.to_string()).collect()
            } else {
                role
            };
            let mgmt: Vec<portguard::catalog::MgmtAllowance> = allowances
                .iter()
                .map(|m| portguard::catalog::MgmtAllowance {
                    prefix: m.prefix.ip(),
                    prefix_len: m.prefix.display_len(),
                    port: m.port,
                })
                .collect();
            let exported = if appliance || !profile.is_empty() {
                let profiles: Vec<portguard::catalog::nft::ProfileSpec> = profile
                    .into_iter()
                    .map(|p| portguard::catalog::nft::ProfileSpec {
                        prefix: p.prefix.ip(),
                        prefix_len: p.prefix.display_len(),
                        roles: p.roles,
                    })
                    .collect();
                use portguard::catalog::nft::Placement;
                let placement = if appliance {
                    Placement::Appliance
                } else {
                    Placement::Host
                };
                commands::catalog::export_nft_profiles(&cat, placement, &roles, &profiles, &mgmt)
            } else {
                commands::catalog::export_nft(&cat, &roles, &mgmt)
            };
            match exported {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => {
                    eprintln!("portguard catalog export: {e}");
                    exit::USAGE
                }
            }
        }
    }
}
