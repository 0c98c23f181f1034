//! `portguard suggest`: the traffic the daemon dropped (or, in monitor mode,
//! would have) because no rule allowed its port, as `[[rule]]` entries in the
//! catalog's own TOML. Appended to the catalog in force they pass `catalog
//! check`, and once loaded (SIGHUP) that traffic passes.

use std::{collections::BTreeMap, fmt::Write as _, io::BufRead as _};

use crate::{
    catalog::{Catalog, Protocol},
    cli::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, SuggestArgs},
    commands::{
        events::{ClientError, parse_line, request},
        run::read_catalog,
    },
    events::{control::Aggregates, control::Request, store::PortAggregate},
};

pub fn suggest(args: SuggestArgs) -> u8 {
    let aggregates = match fetch(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("portguard suggest --iface {}: {e}", args.iface);
            return e.exit_code();
        }
    };
    let catalog = match read_catalog(aggregates.catalog.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portguard suggest: the catalog in force no longer loads:\n{e}");
            return EXIT_FAILURE;
        }
    };
    match fragment(&catalog, &aggregates) {
        Ok(text) => {
            print!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("portguard suggest --iface {}: {e}", args.iface);
            EXIT_USAGE
        }
    }
}

fn fetch(args: &SuggestArgs) -> Result<Aggregates, ClientError> {
    let mut reader = request(&args.run_dir, &args.iface, &Request::Aggregates)?;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| ClientError::Output(e.to_string()))?;
    parse_line(line.trim())
}

/// One suggestion: a (protocol, port) with its counts over both verdicts.
#[derive(Default)]
struct Seen {
    packets: u64,
    sources: u64,
    capped: bool,
}

/// The TOML fragment for `a`, against `catalog`.
pub fn fragment(catalog: &Catalog, a: &Aggregates) -> Result<String, String> {
    let Some(role) = a.roles.first() else {
        return Err(
            "the instance runs no --role (per-destination profiles only): add the rules to the role of the profile by hand"
                .into(),
        );
    };
    let table = catalog
        .role(role)
        .ok_or_else(|| format!("role {role} is not in the catalog in force"))?
        .table;
    let mine = catalog.resolve_roles(&a.roles).map_err(|e| e.to_string())?;
    let mut seen: BTreeMap<(String, u16), Seen> = BTreeMap::new();
    for p in a.ports.iter().filter(|p| useful(p)) {
        let s = seen.entry((p.proto.clone(), p.port)).or_default();
        s.packets += p.not_allowed;
        // Sources per verdict may overlap: the larger is a floor.
        s.sources = s.sources.max(p.sources);
        s.capped |= p.sources_capped;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# portguard suggest --iface {}: traffic {} since the daemon started ({} mode),\n\
         # {} (proto, port) pair(s), for role {role}. Review before appending to\n\
         # {} and reloading (SIGHUP).",
        a.iface,
        if a.mode == "monitor" {
            "that enforcing would drop"
        } else {
            "dropped"
        },
        a.mode,
        seen.len(),
        a.catalog.as_ref().map_or(
            "the catalog (the embedded default: pass it with --catalog)".to_string(),
            |p| { p.display().to_string() }
        ),
    );
    if a.suppressed > 0 {
        let _ = writeln!(
            out,
            "# {} events were suppressed by the budget: counts below are a floor.",
            a.suppressed
        );
    }
    for ((proto, port), s) in &seen {
        let upper = proto.to_uppercase();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "# {upper} {port}: {} packet(s) from {}{} distinct source(s)",
            s.packets,
            s.sources,
            if s.capped { "+" } else { "" }
        );
        for other in listed_elsewhere(catalog, &mine, proto, *port) {
            let _ = writeln!(
                out,
                "# {upper} {port} is listed for role {other}: add `--role {other}` instead?"
            );
        }
        let _ = writeln!(out, "[[rule]]");
        let _ = writeln!(out, "role = {}", toml_str(role));
        let _ = writeln!(
            out,
            "service = {}",
            toml_str(&format!("suggested: {upper} {port}"))
        );
        let _ = writeln!(out, "protocol = {}", toml_str(proto));
        let _ = writeln!(out, "ports = \"{port}\"");
        let _ = writeln!(out, "transport = {}", toml_str(&upper));
        let _ = writeln!(out, "table = {}", toml_str(table.as_str()));
        let _ = writeln!(
            out,
            "note = {}",
            toml_str(&format!(
                "Added from portguard suggest on {}: {} packet(s), {} source(s).",
                a.iface, s.packets, s.sources
            ))
        );
    }
    Ok(out)
}

/// TCP or UDP traffic that a rule could have let through.
fn useful(p: &PortAggregate) -> bool {
    (p.proto == "tcp" || p.proto == "udp") && p.not_allowed > 0 && p.port != 0
}

/// Roles outside the instance's that list `proto`/`port`.
fn listed_elsewhere(catalog: &Catalog, mine: &[String], proto: &str, port: u16) -> Vec<String> {
    let mut roles: Vec<String> = catalog
        .rules
        .iter()
        .filter(|r| !mine.contains(&r.role))
        .filter(|r| r.port_start <= port && port <= r.port_end)
        .filter(|r| {
            r.protocols.iter().any(|p| match p {
                Protocol::Tcp => proto == "tcp",
                Protocol::Udp => proto == "udp",
            })
        })
        .map(|r| r.role.clone())
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// A TOML basic string: JSON's string escapes (\", \\, \n, \uXXXX) are
/// all valid TOML escapes.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(proto: &str, port: u16, verdict: &str, packets: u64) -> PortAggregate {
        PortAggregate {
            proto: proto.into(),
            port,
            direction: "inbound".into(),
            verdict: verdict.into(),
            packets,
            sources: 2,
            sources_capped: false,
            not_allowed: packets,
            requests: packets,
            request_sources: 2,
            request_sources_capped: false,
        }
    }

    #[test]
    fn fragment_appended_to_the_catalog_checks_and_names_other_roles() {
        let catalog = Catalog::embedded();
        let a = Aggregates {
            iface: "eth9".into(),
            roles: vec!["front-end".into()],
            catalog: None,
            mode: "monitor".into(),
            ports: vec![
                agg("udp", 161, "would_drop", 20),
                agg("tcp", 3389, "would_drop", 3),
                agg("udp", 3478, "would_drop", 4),
            ],
            events_received: 27,
            suppressed: 0,
        };
        let text = fragment(&catalog, &a).unwrap_or_else(|e| panic!("no fragment: {e}"));
        assert!(
            text.contains("# UDP 161: 20 packet(s) from 2 distinct"),
            "{text}"
        );
        let combined = format!("{}\n{text}", Catalog::embedded_text());
        let (with, _) = Catalog::parse(&combined, "combined.toml")
            .unwrap_or_else(|e| panic!("the fragment does not check:\n{e}\n{text}"));
        for port in [161, 3389, 3478] {
            assert!(
                with.rules
                    .iter()
                    .any(|r| r.role == "front-end" && r.port_start == port && r.port_end == port),
                "no front-end rule for {port} in\n{text}"
            );
        }
        let hint = text
            .lines()
            .find(|l| l.starts_with("# UDP 3478 is listed for role"));
        assert!(
            hint.is_some(),
            "no hint about the roles listing UDP 3478:\n{text}"
        );
    }
}
