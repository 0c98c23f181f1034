//! portguard's command line over the `portguard` library: the clap
//! definitions ([`cli`], which docgen turns into man pages, completions and
//! docs/cli.md) and one module per command, each turning flags into calls
//! of the library and its answers into text, JSON, a pcap file or a
//! terminal view.

pub mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// The `portguard` binary: parses the flags, sets up logging, runs the
/// command and exits with its code (docs/cli.md).
pub fn main() -> ExitCode {
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
        Command::Catalog(c) => commands::catalog::catalog(c),
    })
}
