//! `cargo xtask docs`: docs/cli.md from the clap definitions, written by
//! `portguard-docgen` (crate `docgen`; xtask cannot link the `portguard`
//! library itself, it must build before the eBPF toolchain exists). The
//! `docs_cli_md_is_current` test fails until this has been run after a
//! change to the command line.

use anyhow::Result;

pub fn cli_md() -> Result<()> {
    crate::cargo(
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "docgen",
            "--bin",
            "portguard-docgen",
            "--",
            "cli-md",
        ],
        &[],
        &[],
    )
}
