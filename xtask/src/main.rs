//! `cargo xtask`: set up the toolchain, build, run the lab demo, test, bench.

mod lab;
mod setup;

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
    /// Install what is missing: Debian's rustc with core for bpfel-unknown-none,
    /// bpf-linker, and the tools the tests and the lab use.
    Setup,
    /// Build the self-contained `portguard` binary (release).
    Build,
    /// Set up, build, and run the lab demo; `-- --iface IF --role R …` runs
    /// `portguard run` on a real interface instead.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the whole test suite (privileged tests included).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the benchmarks (writes docs/benchmarks.md).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A longer fuzzing run than the one `test` includes.
    Fuzz {
        /// Cases per property.
        #[arg(long, default_value = "200000")]
        cases: u64,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(setup::Needs::Everything),
        Cmd::Build => {
            setup::setup(setup::Needs::Build)?;
            build()
        }
        Cmd::Run { args } => {
            setup::setup(setup::Needs::Lab)?;
            build()?;
            if args.is_empty() { lab::demo() } else { lab::real_interface(&args) }
        }
        Cmd::Test { args } => {
            setup::setup(setup::Needs::Everything)?;
            build()?;
            test(&args)
        }
        Cmd::Bench { args } => {
            setup::setup(setup::Needs::Everything)?;
            build()?;
            cargo(&["run", "--release", "-p", "integration-tests", "--bin", "bench", "--"], &args, &[])
        }
        Cmd::Fuzz { cases } => {
            setup::setup(setup::Needs::Build)?;
            build()?;
            cargo(
                &["test", "--release", "-p", "integration-tests", "--test", "fuzz", "--", "--nocapture"],
                &[],
                &[("PORTGUARD_FUZZ_CASES", &cases.to_string())],
            )
        }
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub fn portguard_bin() -> PathBuf {
    root().join("target/release/portguard")
}

fn build() -> Result<()> {
    cargo(&["build", "--release", "-p", "classifier-user"], &[], &[])
}

fn test(extra: &[String]) -> Result<()> {
    // The whole workspace in release: the eBPF object is built once, and the
    // privileged tests find target/release/portguard.
    cargo(&["test", "--workspace", "--release"], extra, &[])
}

/// Runs cargo in the repository with bpf-linker reachable.
fn cargo(args: &[&str], extra: &[String], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args(args).args(extra).env("PATH", setup::path_with_cargo_bin());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
