//! `portguard run`: the flags become the daemon's options; it starts,
//! serves until SIGINT/SIGTERM (reloading on SIGHUP) and detaches, and the
//! counters are printed after the detach.

use std::io::{self, Write as _};

use portguard::{
    daemon::{Daemon, Options},
    exit,
    loader::{AttachMode, FlowLimits},
    policy::{self, StunBudget},
};

use crate::cli::{MediaCheck, Mode, RunArgs, XdpMode};

/// The daemon's options as the flags give them.
fn options(args: RunArgs) -> Options {
    Options {
        appliance: args.appliance,
        roles: args.role,
        profiles: args.profile,
        catalog: args.catalog,
        edition: args.edition,
        monitor: args.mode == Mode::Monitor,
        xdp_mode: match args.xdp_mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
        },
        metrics_addr: args.metrics_addr,
        client_media_ports: args.client_media_ports,
        addresses: args.addresses,
        mgmt: args.mgmt,
        default_mgmt: !args.no_default_mgmt,
        drop_echo: args.drop_echo,
        drop_ipsec_on_media: args.drop_ipsec_on_media,
        clean_start: args.clean_start,
        bpffs: args.bpffs,
        keep_attached: args.keep_attached,
        allow_loopback: args.allow_loopback,
        events_rate: args.events_rate,
        events_pass: args.events_pass,
        flow_limits: FlowLimits {
            flows: args.flows,
            flows_unconfirmed: args.flows_unconfirmed,
            fragments: args.fragments,
            flow_share: args.flow_share.unwrap_or(args.flows_unconfirmed / 8),
            fragment_share: args.fragments / 8,
        },
        media_check: match args.media_check {
            MediaCheck::Enforce => policy::MediaCheck::Enforce,
            MediaCheck::Monitor => policy::MediaCheck::Monitor,
            MediaCheck::Off => policy::MediaCheck::Off,
        },
        stun_budget: StunBudget {
            source_rate: args.stun_rate,
            source_burst: args.stun_burst,
            net_rate: args.stun_net_rate,
            net_burst: args.stun_net_burst,
        },
        ifaces: args.iface,
    }
}

pub fn run(args: RunArgs) -> u8 {
    let outcome = match Daemon::start(options(args)) {
        Ok(daemon) => daemon.serve(),
        Err(e) => return failed(&e.to_string(), e.exit_code()),
    };
    // Printed after the detach, ignoring write errors: a closed stdout
    // (EPIPE) must never keep the program attached, nor panic.
    match outcome.counters {
        Ok(s) if s.len() == 1 => {
            let _ = writeln!(io::stdout(), "{}", s[0].1.table());
        }
        Ok(s) => {
            for (leg, snap) in s {
                let _ = writeln!(io::stdout(), "{leg}\n{}\n", snap.table());
            }
        }
        Err(e) => log::warn!("reading counters at exit: {e}"),
    }
    match outcome.error {
        None => exit::OK,
        Some(e) => failed(&e.to_string(), e.exit_code()),
    }
}

fn failed(message: &str, code: u8) -> u8 {
    // stderr may be closed too: nothing more to do than the exit code.
    let _ = writeln!(io::stderr(), "portguard run: {message}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(argv: &[&str]) -> RunArgs {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(
            ["portguard", "run"].iter().chain(argv.iter()).copied(),
        )
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            crate::cli::Command::Run(a) => a,
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_flags_become_the_daemons_options() {
        let o = options(run_args(&[
            "--iface",
            "pgx0",
            "--iface",
            "pgx1",
            "--no-default-mgmt",
            "--mode",
            "monitor",
            "--flows-unconfirmed",
            "8192",
        ]));
        assert_eq!(o.ifaces, ["pgx0", "pgx1"], "the legs in order");
        assert!(o.is_appliance(), "two legs are appliance mode");
        assert!(
            o.monitor && !o.default_mgmt,
            "--mode monitor and --no-default-mgmt"
        );
        assert_eq!(
            o.flow_limits.flow_share, 1024,
            "the default share is an eighth of --flows-unconfirmed"
        );
        let one = options(run_args(&["--iface", "pgx0", "--appliance"]));
        assert!(one.is_appliance(), "--appliance on one leg");
        assert!(
            !options(run_args(&["--iface", "pgx0"])).is_appliance(),
            "one leg is a host"
        );
    }
}
