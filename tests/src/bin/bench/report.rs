//! The benchmark's output: sections of markdown tables, the targets of the
//! issues that set them (7, 14) with met/missed, and the machine they were
//! measured on.

use std::fmt::Write as _;

pub struct Target {
    /// The issue that set the target.
    issue: u32,
    what: String,
    measured: String,
    met: bool,
}

impl Target {
    pub fn new(issue: u32, what: &str, measured: String, met: bool) -> Target {
        Target {
            issue,
            what: what.to_string(),
            measured,
            met,
        }
    }
}

#[derive(Default)]
pub struct Report {
    sections: Vec<String>,
    targets: Vec<Target>,
    failures: Vec<String>,
}

impl Report {
    pub fn section(&mut self, title: &str, method: &str, table: String) {
        let s = format!("## {title}\n\n{method}\n\n{table}");
        println!("{s}");
        self.sections.push(s);
    }

    pub fn target(&mut self, t: Target) {
        println!(
            "target (issue {}): {} — {} — {}",
            t.issue,
            t.what,
            t.measured,
            if t.met { "met" } else { "MISSED" }
        );
        self.targets.push(t);
    }

    /// A part of the bench that could not run: reported, never hidden.
    pub fn failed(&mut self, part: &str, e: &anyhow::Error) {
        let s = format!("{part}: NOT MEASURED: {e:#}");
        eprintln!("{s}");
        self.failures.push(s);
    }

    pub fn has_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn targets_table(&self) -> String {
        let mut t = String::from("| issue | target | measured | |\n|---:|---|---|---|\n");
        for x in &self.targets {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                x.issue,
                x.what,
                x.measured,
                if x.met { "met" } else { "**missed**" }
            );
        }
        t
    }

    pub fn markdown(&self, header: &str, machine: &str, run: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "## Machine\n\n{machine}\n{run}\n");
        let _ = writeln!(out, "## Targets\n\n{}", self.targets_table());
        for f in &self.failures {
            let _ = writeln!(out, "- {f}");
        }
        for s in &self.sections {
            let _ = writeln!(out, "{s}");
        }
        out
    }
}
