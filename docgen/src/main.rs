//! `portguard-docgen`: writes what docgen generates, for `cargo xtask dist`
//! (man pages, completions) and `cargo xtask docs` (docs/cli.md).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portguard-docgen",
    about = "Generate portguard's man pages, completions and CLI reference"
)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// portguard.8 and one page per subcommand, into DIR.
    Man { dir: PathBuf },
    /// bash, zsh and fish completion scripts, into DIR.
    Completions { dir: PathBuf },
    /// The Markdown CLI reference, into FILE (docs/cli.md by default).
    CliMd { file: Option<PathBuf> },
}

fn main() -> ExitCode {
    match generate(Args::parse().what) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portguard-docgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(what: What) -> Result<Vec<PathBuf>> {
    Ok(match what {
        What::Man { dir } => docgen::man_pages(&dir)?,
        What::Completions { dir } => docgen::completions(&dir)?,
        What::CliMd { file } => {
            let file = file.unwrap_or_else(docgen::cli_md_path);
            std::fs::write(&file, docgen::cli_markdown())
                .with_context(|| format!("writing {}", file.display()))?;
            vec![file]
        }
    })
}
