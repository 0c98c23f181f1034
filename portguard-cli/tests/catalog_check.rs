//! `portguard catalog check|show|export` as a user runs them.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use portguard::{
    catalog::{Catalog, nft},
    policy::{self, Mgmt, PolicySpec},
};

const BIN: &str = env!("CARGO_BIN_EXE_portguard");

fn portguard(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {BIN} {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file in the temp dir, unique to this process and name.
fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("portguard-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

fn embedded_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../catalog/sfb2015.toml")
}

#[test]
fn check_of_the_default_catalog_succeeds_with_warnings() {
    let path = embedded_path();
    let out = portguard(&["catalog", "check", path.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(": ok: 30 roles"), "summary: {stdout}");
    let c = Catalog::embedded();
    let outbound = c
        .rules
        .iter()
        .filter(|r| r.direction == portguard::catalog::Direction::Outbound)
        .count();
    assert!(outbound > 0, "the perimeter roles have outbound rules");
    assert!(
        stdout.contains(&format!(
            "{} rules ({} inbound, {outbound} outbound)",
            c.rules.len(),
            c.rules.len() - outbound
        )),
        "summary counts the directions: {stdout}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("sfb2015.toml:") && l.contains(": warning: ")),
        "overlap warnings:\n{stderr}"
    );
    assert!(!stderr.contains(": error: "), "{stderr}");
}

#[test]
fn check_reports_every_error_with_file_line_col_and_exits_2() {
    let embedded = Catalog::embedded_text();
    // Break two rules: a port 0 and an unknown protocol.
    let broken = embedded
        .replacen("ports = \"5062\"", "ports = \"0\"", 1)
        .replacen("protocol = \"udp\"", "protocol = \"sctp\"", 1);
    assert_ne!(broken, embedded);
    let port_line = broken
        .lines()
        .position(|l| l == "ports = \"0\"")
        .map(|i| i + 1)
        .unwrap_or_default();
    let proto_line = broken
        .lines()
        .position(|l| l == "protocol = \"sctp\"")
        .map(|i| i + 1)
        .unwrap_or_default();
    let path = temp_file("broken.toml", broken.as_bytes());
    let p = path.to_str().unwrap_or_default();
    let out = portguard(&["catalog", "check", p]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("{p}:{port_line}:9: error: port 0")),
        "port 0 at line {port_line}:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{p}:{proto_line}:12: error: unknown protocol `sctp`"
        )),
        "sctp at line {proto_line}:\n{stderr}"
    );
    assert!(stderr.contains("  hint: "), "hints are printed:\n{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("invalid: 2 errors")),
        "summary:\n{stderr}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn check_of_bad_bytes_and_missing_files_exits_2() {
    let path = temp_file("latin1.toml", b"version = 1\n# caf\xe9\n");
    let p = path.to_str().unwrap_or_default();
    let out = portguard(&["catalog", "check", p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{p}:2:6: error: not UTF-8")),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_file(&path);

    let out = portguard(&["catalog", "check", "/nonexistent/portguard.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/portguard.toml: error: cannot read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn show_json_is_one_object_per_protocol() {
    let out = portguard(&["catalog", "show", "--role", "front-end", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v.as_array().expect("an array");
    let expected = Catalog::embedded()
        .effective_rules(&["front-end".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), expected.len());
    let video: Vec<&serde_json::Value> = rows.iter().filter(|r| r["port_start"] == 57501).collect();
    let protos: Vec<&str> = video
        .iter()
        .filter_map(|r| r["protocol"].as_str())
        .collect();
    assert_eq!(protos, ["tcp", "udp"], "TCP/UDP is two objects");
    assert!(
        rows.iter().any(|r| r["role"] == "all-internal-servers"),
        "inclusions resolved"
    );
}

#[test]
fn check_reports_a_bad_direction_at_its_line_and_column() {
    let embedded = Catalog::embedded_text();
    let broken = embedded.replacen("\ndirection = \"outbound\"\n", "\ndirection = \"out\"\n", 1);
    assert_ne!(broken, embedded);
    let line = broken
        .lines()
        .position(|l| l == "direction = \"out\"")
        .map(|i| i + 1)
        .unwrap_or_default();
    let path = temp_file("direction.toml", broken.as_bytes());
    let p = path.to_str().unwrap_or_default();
    let out = portguard(&["catalog", "check", p]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("{p}:{line}:13: error: unknown direction `out`")),
        "the bad direction at line {line}, column 13:\n{stderr}"
    );
    let _ = std::fs::remove_file(&path);
}

/// Every perimeter rule of the catalog is in `catalog show --format json`
/// under its role, with its direction and the table and document it is from.
#[test]
fn show_json_lists_every_perimeter_rule_with_its_direction() {
    let out = portguard(&["catalog", "show", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v.as_array().expect("an array");
    assert!(
        rows.iter()
            .all(|r| r["direction"] == "inbound" || r["direction"] == "outbound"),
        "every object has a direction"
    );
    let c = Catalog::embedded();
    let mut perimeter = 0;
    for id in c.role_ids() {
        for r in c
            .own_rules(id)
            .into_iter()
            .filter(|r| r.table.document() != portguard::catalog::SERVER_PORTS_DOCUMENT)
        {
            perimeter += 1;
            let found = rows.iter().any(|o| {
                o["role"] == id
                    && o["protocol"] == r.protocol.as_str()
                    && o["port_start"] == r.port_start
                    && o["port_end"] == r.port_end
                    && o["direction"] == r.direction.as_str()
                    && o["table"] == r.table.as_str()
                    && o["document"] == r.table.document()
                    && o["service"] == r.service.as_str()
            });
            assert!(found, "line {}: {id} {r:?} is not in the json", r.line);
        }
    }
    assert_eq!(
        perimeter,
        44 + 10,
        "the perimeter rules and the 10 hybrid rules (each names one protocol, so one object each)"
    );
}

#[test]
fn show_other_formats_and_unknown_role() {
    for format in ["table", "csv", "md"] {
        let out = portguard(&["catalog", "show", "--format", format]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{format}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("ip-phone"),
            "{format} lists every role"
        );
    }
    let out = portguard(&["catalog", "show", "--table", "ipsec", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).lines().count(),
        16,
        "header and the 15 IPsec rows"
    );

    let out = portguard(&["catalog", "show", "--role", "edge"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown role `edge`"),
        "{}",
        text(&out.stderr)
    );
}

/// `nft -c` needs root and nft; skipped without them unless CI=true.
/// A host running `roles` with these management allowances (and no default one).
fn host(roles: &[&str], mgmt: &[Mgmt]) -> PolicySpec {
    PolicySpec {
        default_roles: Some(roles.iter().map(|r| r.to_string()).collect()),
        mgmt: mgmt.to_vec(),
        ..PolicySpec::default()
    }
}

/// The nft export of a host running `roles`.
fn export(catalog: &Catalog, roles: &[&str], mgmt: &[Mgmt]) -> String {
    policy::resolve(catalog, &host(roles, mgmt))
        .map(|r| nft::export(&r))
        .unwrap_or_else(|e| panic!("{roles:?}: {e}"))
}

fn nft_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    testkit::require(
        "nft_check_accepts_every_role",
        (!(root && nft)).then(|| format!("nft -c needs root and nft (root: {root}, nft: {nft})")),
    )
}

#[test]
fn nft_check_accepts_every_role() {
    if !nft_usable() {
        return;
    }
    let catalog = Catalog::embedded();
    let mut roles: Vec<String> = catalog.role_ids().iter().map(|r| r.to_string()).collect();
    roles.push(roles.join(","));
    for (i, role) in roles.into_iter().enumerate() {
        let out = portguard(&["catalog", "export", "--format", "nft", "--role", &role]);
        assert_eq!(out.status.code(), Some(0), "{role}: {}", text(&out.stderr));
        let ruleset = text(&out.stdout);
        assert!(ruleset.contains("policy drop;"), "{role}: default drop");
        let path = temp_file(&format!("export-{i}.nft"), ruleset.as_bytes());
        let check = Command::new("nft")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("nft");
        assert!(
            check.status.success(),
            "nft -c refused the export for {role}:\n{}\n{ruleset}",
            text(&check.stderr)
        );
        let _ = std::fs::remove_file(&path);
    }

    // Prefixes with host bits set are masked (nft refuses them otherwise).
    let mgmt: Vec<Mgmt> = ["10.1.2.3/8:2222", "[2001:db8::1/32]:22"]
        .iter()
        .map(|m| m.parse().unwrap_or_else(|e| panic!("{m}: {e}")))
        .collect();
    let ruleset = export(&catalog, &["director"], &mgmt);
    assert!(
        ruleset.contains("ip saddr 10.0.0.0/8 tcp dport 2222"),
        "{ruleset}"
    );
    assert!(
        ruleset.contains("ip6 saddr 2001:db8::/32 tcp dport 22"),
        "{ruleset}"
    );
    let path = temp_file("mgmt.nft", ruleset.as_bytes());
    let check = Command::new("nft")
        .args(["-c", "-f"])
        .arg(&path)
        .output()
        .expect("nft");
    assert!(
        check.status.success(),
        "nft -c refused:\n{}\n{ruleset}",
        text(&check.stderr)
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn nft_export_sets_hold_the_assigned_ports() {
    let catalog = Catalog::embedded();
    let ruleset = export(&catalog, &["front-end-mediation"], &[]);
    for needle in [
        "jump role_front_end_mediation",
        "jump role_front_end\n",
        "jump role_all_servers",
        "jump role_all_internal_servers",
        "elements = { 5067-5068, 5070, 5081-5082 }",
        "elements = { 49152-57500 }",
        "elements = { 1434 }",
        "udp sport 67 udp dport 68",
    ] {
        assert!(
            ruleset.contains(needle),
            "`{needle}` missing from:\n{ruleset}"
        );
    }
    assert!(
        !ruleset.contains("tcp dport 22"),
        "no management allowance was asked for:\n{ruleset}"
    );
    let e = policy::resolve(&catalog, &host(&["nope"], &[])).err();
    assert!(e.is_some_and(|e| e.to_string().contains("unknown role `nope`")));
}

#[test]
fn nft_check_accepts_the_appliance_export() {
    if !nft_usable() {
        return;
    }
    let perimeter = [
        "access-edge-external",
        "webconf-edge-external",
        "av-edge-external",
        "consolidated-edge-external",
        "edge-internal",
        "lb-edge-external",
        "lb-edge-internal",
        "reverse-proxy-external",
        "reverse-proxy-internal",
    ];
    let mut cases: Vec<Vec<String>> = Vec::new();
    // Every perimeter role behind its own /32 and /128, inside a /24 and a /64.
    let mut all = vec![
        "--profile".to_string(),
        "198.18.2.0/24=edge-internal".into(),
        "--profile".into(),
        "2001:db8:2::/64=edge-internal".into(),
    ];
    for (i, role) in perimeter.iter().enumerate() {
        all.extend([
            "--profile".into(),
            format!("198.18.2.{}={role}", 10 + i),
            "--profile".into(),
            format!("2001:db8:2::{:x}={role}", 0x10 + i),
        ]);
    }
    cases.push(all);
    // Own roles, a whole-family profile, a narrowed guard.
    cases.push(
        [
            "--role",
            "reverse-proxy-external,reverse-proxy-internal",
            "--profile",
            "::/0=lb-edge-internal",
            "--profile",
            "0.0.0.0/0=consolidated-edge-external",
            "--mgmt",
            "198.18.0.0/15:2222",
            "--no-default-mgmt",
        ]
        .map(String::from)
        .to_vec(),
    );
    // No profile at all: the forward chain drops all but replies and the essentials.
    cases.push(Vec::new());
    for (i, extra) in cases.iter().enumerate() {
        // A host with the same profiles: an input chain only.
        let mut host = vec!["catalog", "export", "--format", "nft"];
        host.extend(extra.iter().map(String::as_str));
        if extra.iter().any(|a| a == "--profile") {
            let out = portguard(&host);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{host:?}: {}",
                text(&out.stderr)
            );
            let ruleset = text(&out.stdout);
            assert!(
                ruleset.contains("jump to_profile") && !ruleset.contains("hook forward"),
                "{host:?}: {ruleset}"
            );
            let path = temp_file(&format!("host-profiles-{i}.nft"), ruleset.as_bytes());
            let check = Command::new("nft")
                .args(["-c", "-f"])
                .arg(&path)
                .output()
                .expect("nft");
            assert!(
                check.status.success(),
                "nft -c refused the host export {host:?}:\n{}\n{ruleset}",
                text(&check.stderr)
            );
            let _ = std::fs::remove_file(&path);
        }
        let mut args = vec!["catalog", "export", "--format", "nft", "--appliance"];
        args.extend(extra.iter().map(String::as_str));
        let out = portguard(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let ruleset = text(&out.stdout);
        assert!(
            ruleset.contains("hook forward priority filter; policy drop;"),
            "{args:?}: no forward chain in:\n{ruleset}"
        );
        let path = temp_file(&format!("appliance-{i}.nft"), ruleset.as_bytes());
        let check = Command::new("nft")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("nft");
        assert!(
            check.status.success(),
            "nft -c refused the appliance export {args:?}:\n{}\n{ruleset}",
            text(&check.stderr)
        );
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn export_profile_needs_valid_input() {
    for (args, needle) in [
        (
            &[
                "--appliance",
                "--profile",
                "198.18.2.10/33=access-edge-external",
            ][..],
            "--profile",
        ),
        (
            &["--appliance", "--profile", "198.18.2.10/32=no-such-role"][..],
            "no-such-role",
        ),
        (
            &[
                "--appliance",
                "--profile",
                "198.18.2.0/24=edge-internal",
                "--profile",
                "198.18.2.9/24=edge-internal",
            ][..],
            "given twice",
        ),
    ] {
        let mut all = vec!["catalog", "export", "--format", "nft"];
        all.extend(args);
        let out = portguard(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {err}");
        assert!(
            err.contains(needle),
            "{all:?}: stderr lacks {needle:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{all:?} printed a ruleset anyway");
    }
}

#[test]
fn the_2019_edition_on_every_catalog_command() {
    let out = portguard(&["catalog", "check", "--edition", "2019"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("catalog/sfb2019.toml (embedded): ok: 29 roles,"),
        "{}",
        text(&out.stdout)
    );
    let out = portguard(&["catalog", "show", "--edition", "2019", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("show --format json");
    let ports: Vec<u64> = rows
        .iter()
        .filter_map(|r| r.get("port_start").and_then(serde_json::Value::as_u64))
        .collect();
    assert_eq!(
        rows.len(),
        Catalog::edition(portguard::catalog::Edition::Sfb2019)
            .rules
            .iter()
            .map(|r| r.protocols.len())
            .sum::<usize>(),
        "one row per rule and protocol"
    );
    assert!(
        !ports.contains(&5269) && !ports.contains(&23456),
        "no XMPP port in 2019"
    );
    let out = portguard(&[
        "catalog",
        "export",
        "--format",
        "nft",
        "--edition",
        "2019",
        "--role",
        "access-edge-external",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("5269"), "{}", text(&out.stdout));
    let out = portguard(&[
        "catalog",
        "export",
        "--format",
        "nft",
        "--edition",
        "2015",
        "--role",
        "access-edge-external",
    ]);
    assert!(text(&out.stdout).contains("5269"), "2015 keeps XMPP");
}

#[test]
fn edition_and_catalog_together_are_refused() {
    let path = embedded_path();
    let out = portguard(&[
        "catalog",
        "show",
        "--edition",
        "2019",
        "--catalog",
        path.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("'--edition <EDITION>' cannot be used with '--catalog <FILE>'"),
        "{}",
        text(&out.stderr)
    );
    let out = portguard(&["catalog", "show", "--edition", "2016"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown edition `2016`; expected one of: 2015, 2019"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn diff_of_the_editions_lists_the_removed_rows_and_exits_0() {
    let out = portguard(&["catalog", "diff", "2015", "2019"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "role persistent-chat: removed (持久聊天前端服务器, table server, includes all-servers)",
        "role lb-edge-external:",
        "roles: 1 removed, 0 added, 0 changed; rules: 8 removed, 0 added, 0 changed; address sets: 0 differ; IPsec exceptions: 0 differ",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line `{line}` in:\n{stdout}"
        );
    }
    // A file against its own edition: the same rows.
    let path = embedded_path();
    let out = portguard(&["catalog", "diff", path.to_str().unwrap_or_default(), "2015"]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .ends_with("rules: 0 removed, 0 added, 0 changed; address sets: 0 differ; IPsec exceptions: 0 differ\n"),
        "{}",
        text(&out.stdout)
    );
    let out = portguard(&["catalog", "diff", "2015", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2), "a side that does not load");
    assert!(
        text(&out.stderr).contains("/nonexistent.toml: error: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn import_endpoints_prints_the_set_and_refuses_bad_json_at_its_place() {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/endpoints-worldwide-sample.json");
    let out = portguard(&[
        "catalog",
        "import-endpoints",
        sample.to_str().unwrap_or_default(),
        "--version",
        "2023073100",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    let block = text(&out.stdout);
    // Appended to a catalog of its own, the block is a valid set.
    let catalog =
        format!("version = 1\n[[role]]\nid = \"r\"\nlabel = \"R\"\ntable = \"hybrid\"\n{block}");
    let (c, _) =
        Catalog::parse(&catalog, "imported.toml").unwrap_or_else(|e| panic!("{e}\n{block}"));
    let embedded = Catalog::embedded();
    let want = embedded
        .addresses
        .iter()
        .find(|s| s.id == "microsoft-365")
        .map(|s| s.cidrs.clone());
    assert_eq!(
        c.addresses.first().map(|s| s.cidrs.clone()),
        want,
        "the sample's Skype ranges are the embedded microsoft-365 set"
    );
    assert!(block.contains("version 2023073100"), "{block}");

    let bad = temp_file("endpoints-bad.json", b"[\n  {\"id\": 11,,}\n]\n");
    let out = portguard(&[
        "catalog",
        "import-endpoints",
        bad.to_str().unwrap_or_default(),
    ]);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(2), "bad JSON is bad input");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:2:13: not JSON: key must be a string",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing printed on an error");
}
