//! `cargo xtask`: set up the toolchain, build, run the lab demo, test, bench,
//! fuzz, package, regenerate docs. One module per subcommand; this file holds the command line and what
//! they share (the repository root, running cargo with bpf-linker reachable).

mod bench;
mod build;
mod checks;
mod dist;
mod docs;
mod fresh;
mod fuzz;
mod rootfs;
mod run;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "portguard's repository commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian's rustc with `core` for
    /// bpfel-unknown-none, bpf-linker, and the tools the lab and the tests
    /// drive. A no-op when everything is there.
    Setup,
    /// Set up, then build the self-contained `portguard` binary (release).
    Build,
    /// Set up, build, and run the lab demos: the host scenario, the routed
    /// edge scenario, then the attack scenario (`-- --scenario
    /// host|edge|attack|all` picks; all by default). `-- --iface IF --role R [flags]` runs `portguard run` with
    /// those flags on a real interface instead.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, package (`dist`), check formatting and clippy
    /// (workspace and eBPF crate), and run the whole test suite (privileged
    /// tests included: run as root). Arguments after `--` go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the benchmark binary (`integration-tests`'s
    /// `bench`). Arguments after `--` go to it.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The workspace's property tests (proptest) with many more cases than
    /// `test` runs. Arguments after `--` go to `cargo test` (a name filter,
    /// for example).
    Fuzz {
        /// Cases per property (PROPTEST_CASES).
        #[arg(long, default_value_t = 100_000)]
        cases: u32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and make the Debian package in target/dist/ (checked
    /// with lintian); its path is the last line printed.
    Dist,
    /// Regenerate docs/cli.md from the clap definitions.
    Docs,
}

fn main() -> ExitCode {
    match dispatch() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(setup::Needs::Everything, true).map(|()| ExitCode::SUCCESS),
        Cmd::Build => {
            setup::setup(setup::Needs::Build, false)?;
            build::build().map(|()| ExitCode::SUCCESS)
        }
        Cmd::Run { args } => {
            setup::setup(setup::Needs::Lab, false)?;
            build::build()?;
            match run::scenario(&args)? {
                Some(scenario) => run::lab(scenario).map(|()| ExitCode::SUCCESS),
                None => run::real_interface(&args),
            }
        }
        Cmd::Test { args } => {
            setup::setup(setup::Needs::Everything, false)?;
            build::build()?;
            // The package test (tests/tests/packaging/deb_install.rs) installs this
            // package into this root. debootstrap needs root; so does the
            // test, which skips without it (and fails under CI=true).
            let deb = dist::dist()?;
            // SAFETY: geteuid has no preconditions.
            let rootfs = if unsafe { libc::geteuid() } == 0 {
                Some(rootfs::ensure_rootfs()?)
            } else {
                None
            };
            let mut env = vec![("PORTGUARD_DEB", deb.as_path())];
            env.extend(rootfs.as_deref().map(|r| ("PORTGUARD_TEST_ROOTFS", r)));
            test::test(&args, &env).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Bench { args } => {
            setup::setup(setup::Needs::Everything, false)?;
            build::build()?;
            bench::bench(&args).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Fuzz { cases, args } => {
            setup::setup(setup::Needs::Build, false)?;
            build::build()?;
            fuzz::fuzz(cases, &args).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Dist => {
            setup::setup(setup::Needs::Dist, false)?;
            let deb = dist::dist()?;
            println!("{}", deb.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Docs => {
            setup::setup(setup::Needs::Build, false)?;
            docs::cli_md().map(|()| ExitCode::SUCCESS)
        }
    }
}

/// The repository root (xtask/..).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The binary `cargo xtask build` makes, or `$PORTGUARD_BIN` (as in the
/// test kit).
pub fn portguard_bin() -> PathBuf {
    std::env::var_os("PORTGUARD_BIN")
        .map_or_else(|| root().join("target/release/portguard"), PathBuf::from)
}

/// `cargo args…` in the repository root, with ~/.cargo/bin on PATH: the
/// eBPF build in classifier-user/build.rs looks for bpf-linker there.
pub fn cargo_command(args: &[&str]) -> Command {
    // `cargo xtask` sets CARGO to the cargo that runs us: use the same one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args(args)
        .env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Runs `cargo args… extra…` and fails if it fails.
pub fn cargo(args: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = cargo_command(args);
    cmd.args(extra).envs(env.iter().copied());
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_flags_after_the_separator_through() {
        let cli = Cli::try_parse_from([
            "xtask",
            "run",
            "--",
            "--iface",
            "eth0",
            "--role",
            "front-end",
            "--mode",
            "monitor",
        ])
        .expect("run with portguard's flags parses");
        let Cmd::Run { args } = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args,
            [
                "--iface",
                "eth0",
                "--role",
                "front-end",
                "--mode",
                "monitor"
            ]
        );
    }

    #[test]
    fn test_keeps_a_second_separator_for_the_test_binaries() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "-p", "testkit", "--", "--nocapture"])
                .expect("test with a second separator parses");
        let Cmd::Test { args } = cli.command else {
            panic!("not test")
        };
        assert_eq!(args, ["-p", "testkit", "--", "--nocapture"]);
    }

    #[test]
    fn plain_run_is_the_lab() {
        let cli = Cli::try_parse_from(["xtask", "run"]).expect("a plain run parses");
        assert!(matches!(cli.command, Cmd::Run { args } if args.is_empty()));
    }

    #[test]
    fn run_arguments_choose_a_scenario_or_a_real_interface() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let scenario =
            |a: &[&str]| run::scenario(&args(a)).expect("a scenario or portguard's flags");
        assert_eq!(scenario(&[]), Some(run::Scenario::All));
        assert_eq!(scenario(&["--scenario", "edge"]), Some(run::Scenario::Edge));
        assert_eq!(scenario(&["--scenario=host"]), Some(run::Scenario::Host));
        assert_eq!(
            scenario(&["--scenario", "attack"]),
            Some(run::Scenario::Attack)
        );
        assert_eq!(scenario(&["--scenario", "all"]), Some(run::Scenario::All));
        assert_eq!(scenario(&["--iface", "eth0", "--role", "front-end"]), None);
        let bad = run::scenario(&args(&["--scenario", "moon"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(bad.contains("moon") && bad.contains("edge"), "{bad}");
        let mixed = run::scenario(&args(&["--scenario", "edge", "--iface", "eth0"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(mixed.contains("--iface"), "{mixed}");
    }

    #[test]
    fn the_root_holds_the_workspace() {
        assert!(root().join("Cargo.toml").is_file());
        if std::env::var_os("PORTGUARD_BIN").is_none() {
            assert!(portguard_bin().ends_with("target/release/portguard"));
        }
    }
}
