//! portguard's documentation generated from its clap definitions: man pages
//! (clap_mangen), shell completions (clap_complete) and the Markdown CLI
//! reference docs/cli.md.
//!
//! This lives in its own crate rather than behind a hidden `portguard`
//! subcommand so that the shipped binary carries none of it, and outside
//! xtask because xtask must build before the eBPF toolchain exists (this
//! crate links `portguard-cli` and so the `portguard` library, whose build
//! script compiles the eBPF object). `cargo xtask dist` and `cargo xtask docs` run it.

use std::{
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, Command, CommandFactory as _};
use clap_complete::Shell;
use portguard_cli::cli::Cli;

/// The manual section: portguard is a system administration command.
pub const MAN_SECTION: &str = "8";

/// Where a shell looks for a completion script on Debian, and the file name
/// clap_complete gives it.
pub const COMPLETIONS: [(Shell, &str, &str); 3] = [
    (
        Shell::Bash,
        "portguard.bash",
        "usr/share/bash-completion/completions/portguard",
    ),
    (
        Shell::Zsh,
        "_portguard",
        "usr/share/zsh/vendor-completions/_portguard",
    ),
    (
        Shell::Fish,
        "portguard.fish",
        "usr/share/fish/vendor_completions.d/portguard.fish",
    ),
];

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn writing(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// The `portguard` command, built: subcommands know their full names
/// (`portguard-catalog-check`) and inherit the global flags.
pub fn command() -> Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes `portguard.8` and one page per subcommand, nested ones included
/// (`portguard-catalog-check.8`), into `dir`; returns the files written.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    fn walk(cmd: &Command, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), WriteError> {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name());
        let path = dir.join(format!("{name}.{MAN_SECTION}"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section(MAN_SECTION)
            .manual("portguard")
            .render(&mut page)
            .map_err(writing(&path))?;
        fs::write(&path, page).map_err(writing(&path))?;
        out.push(path);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, out)?;
        }
        Ok(())
    }
    fs::create_dir_all(dir).map_err(writing(dir))?;
    let mut out = Vec::new();
    walk(&command(), dir, &mut out)?;
    Ok(out)
}

/// Writes the bash, zsh and fish completion scripts into `dir` under the
/// names of [`COMPLETIONS`]; returns the files written.
pub fn completions(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    fs::create_dir_all(dir).map_err(writing(dir))?;
    let mut cmd = command();
    COMPLETIONS
        .iter()
        .map(|(shell, file, _)| {
            let path = dir.join(file);
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "portguard", &mut script);
            fs::write(&path, script).map_err(writing(&path))?;
            Ok(path)
        })
        .collect()
}

/// Flags every command has that a reference need not list per command.
fn is_listed(arg: &Arg) -> bool {
    !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version")
}

/// Table cells: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// `--flag VALUE` or `FILE` as the reference shows it.
fn arg_form(arg: &Arg) -> String {
    let value = || {
        arg.get_value_names()
            .map(|names| {
                names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    };
    let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
    let mut form = match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => format!("-{s}, --{l}"),
        (None, Some(l)) => format!("--{l}"),
        (Some(s), None) => format!("-{s}"),
        (None, None) => return format!("`{}`", value()),
    };
    if takes_value {
        form.push(' ');
        form.push_str(&value());
    }
    format!("`{form}`")
}

/// What an argument means: its help, its possible values with their help,
/// its default, and whether it repeats.
fn arg_text(arg: &Arg) -> String {
    let mut text = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(h) => format!("`{}`: {h}", v.get_name()),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    let mut add = |s: String| {
        if !text.is_empty() && !text.ends_with('.') {
            text.push('.');
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&s);
    };
    if !values.is_empty() {
        add(format!("One of {}", values.join("; ")));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    // A switch's "false" says nothing.
    if !defaults.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
        add(format!("Default: `{}`", defaults.join(",")));
    }
    if matches!(arg.get_action(), ArgAction::Append) {
        add("Repeatable".to_string());
    }
    if arg.is_required_set() {
        add("Required".to_string());
    }
    cell(&text)
}

/// `name` is the command as typed (`portguard catalog import-endpoints`):
/// built from the names on the way down, since a display name joins them
/// with the same `-` a subcommand's own name may hold.
fn command_section(cmd: &Command, name: &str, depth: usize, out: &mut String) {
    let _ = writeln!(out, "{} `{name}`\n", "#".repeat(depth + 1));
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    // The global flags are listed once, under `portguard`.
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| is_listed(a) && (depth == 1 || !a.is_global_set()))
        .collect();
    if !args.is_empty() {
        out.push_str("| argument | meaning |\n|---|---|\n");
        for arg in args {
            let _ = writeln!(out, "| {} | {} |", arg_form(arg), arg_text(arg));
        }
        out.push('\n');
    }
    let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subs.is_empty() {
        out.push_str("| command | what it does |\n|---|---|\n");
        for sub in &subs {
            let _ = writeln!(
                out,
                "| `{name} {}` | {} |",
                sub.get_name(),
                cell(&sub.get_about().map(|a| a.to_string()).unwrap_or_default())
            );
        }
        out.push('\n');
    }
    for sub in subs {
        command_section(sub, &format!("{name} {}", sub.get_name()), depth + 1, out);
    }
}

/// docs/cli.md: every command, its usage and every argument, from the clap
/// definitions. No version line: it would name the commit and go stale with
/// every commit.
pub fn cli_markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from portguard-cli/src/cli.rs by `cargo xtask docs`; \
         do not edit by hand. -->\n\n\
         # portguard command line reference\n\n\
         Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid input. \
         Errors go to stderr and name the flag or the catalog's `file:line:col`. \
         The same text is in the man pages (`man portguard`, `man portguard-run`, …) \
         that the Debian package installs.\n\n",
    );
    let cmd = command();
    command_section(&cmd, cmd.get_name(), 1, &mut out);
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// The repository's copy of the reference.
pub fn cli_md_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(
        || PathBuf::from("docs/cli.md"),
        |root| root.join("docs/cli.md"),
    )
}
