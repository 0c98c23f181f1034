//! What docgen generates covers every command, and the repository's
//! docs/cli.md is what the clap definitions say today.

use std::{collections::BTreeSet, fs, path::PathBuf};

use clap::Command;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("docgen-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `portguard`, `portguard run`, `portguard catalog import-endpoints`, …
/// (as typed: a subcommand's own name may hold a `-`).
fn every_command_name() -> BTreeSet<String> {
    fn walk(cmd: &Command, name: String, out: &mut BTreeSet<String>) {
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{name} {}", sub.get_name()), out);
        }
        out.insert(name);
    }
    let mut out = BTreeSet::new();
    let cmd = docgen::command();
    walk(&cmd, cmd.get_name().to_string(), &mut out);
    out
}

#[test]
fn docs_cli_md_is_current() {
    let path = docgen::cli_md_path();
    let committed =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let generated = docgen::cli_markdown();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || {
                    format!(
                        "lengths differ: {} vs {} lines",
                        committed.lines().count(),
                        generated.lines().count()
                    )
                },
                |i| {
                    format!(
                        "line {}: docs/cli.md has {:?}, the clap definitions give {:?}",
                        i + 1,
                        committed.lines().nth(i).unwrap_or_default(),
                        generated.lines().nth(i).unwrap_or_default()
                    )
                },
            );
        panic!("docs/cli.md is stale ({first}): run `cargo xtask docs` and commit it");
    }
}

#[test]
fn the_reference_has_a_section_and_a_row_per_command_and_flag() {
    let md = docgen::cli_markdown();
    for name in every_command_name() {
        let heading = format!("`{name}`");
        assert!(
            md.lines()
                .any(|l| l.starts_with('#') && l.ends_with(&heading)),
            "docs/cli.md has no heading for {name}"
        );
    }
    for flag in [
        "--iface IF",
        "--metrics-addr ADDR",
        "--log-level LEVEL",
        "--keep-attached",
    ] {
        assert!(md.contains(flag), "docs/cli.md does not list {flag}");
    }
    assert!(
        !md.contains("commit "),
        "docs/cli.md must not carry the version line (it names the commit)"
    );
}

#[test]
fn every_command_gets_a_man_page_in_section_8() {
    let dir = TempDir::new("man");
    let written = docgen::man_pages(&dir.0).expect("man pages");
    let names: BTreeSet<String> = written
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        })
        .collect();
    let want: BTreeSet<String> = every_command_name()
        .into_iter()
        .map(|n| format!("{}.8", n.replace(' ', "-")))
        .collect();
    assert_eq!(names, want, "man pages written");
    for page in &written {
        let text = fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let stem = page
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        assert!(
            text.starts_with(".ie") || text.contains(&format!(".TH {stem} 8")),
            "{} has no .TH {stem} 8 header:\n{}",
            page.display(),
            text.lines().take(5).collect::<Vec<_>>().join("\n")
        );
        assert!(
            text.contains(".SH NAME"),
            "{} has no NAME section",
            page.display()
        );
    }
    let run = fs::read_to_string(dir.0.join("portguard-run.8")).unwrap_or_default();
    assert!(
        run.contains("metrics\\-addr"),
        "portguard-run.8 does not describe --metrics-addr"
    );
}

#[test]
fn completions_know_every_subcommand() {
    let dir = TempDir::new("completions");
    let written = docgen::completions(&dir.0).expect("completions");
    assert_eq!(written.len(), docgen::COMPLETIONS.len());
    for script in &written {
        let text =
            fs::read_to_string(script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        for sub in ["run", "catalog", "check", "stats", "detach", "reload"] {
            assert!(
                text.contains(sub),
                "{} does not complete `{sub}`",
                script.display()
            );
        }
    }
}
