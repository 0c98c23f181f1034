//! The operator artefacts against Prometheus' own tool: docs/alerts.yml
//! passes `promtool check rules`, its behaviour passes the unit tests in
//! docs/alerts.test.yml (`promtool test rules`), it names only metrics and
//! labels portguard exports, and a real scrape of a running portguard passes
//! `promtool check metrics` (the exposition linter). Without promtool these
//! tests skip, except under CI=true where they fail.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use portguard::metric_families::FAMILIES;
use testkit::ops::{self, ALLOWED_PORT, FORBIDDEN_PORT, Pair, TempDir, ok, text};

/// The metric names portguard exports (what the rules may use): the one
/// list of families the library registers and docs/metrics.md documents.
fn exported() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|f| f.name)
}

/// Whether promtool can run; under CI=true its absence fails the test.
fn have_promtool(test: &str) -> bool {
    testkit::require_program(test, "promtool", "prometheus")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = ok(
        "running promtool",
        Command::new("promtool")
            .args(args)
            .current_dir(ops::repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn(),
    );
    if let Some(mut pipe) = child.stdin.take() {
        ok(
            "writing to promtool",
            pipe.write_all(stdin.unwrap_or_default().as_bytes()),
        );
    }
    ok("waiting for promtool", child.wait_with_output())
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    if !have_promtool("alert_rules_pass_promtool_check_rules") {
        return;
    }
    let out = promtool(&["check", "rules", "docs/alerts.yml"], None);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "promtool check rules docs/alerts.yml failed:\n{stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("SUCCESS: 8 rules found"),
        "expected 8 rules: {stdout}"
    );
}

#[test]
fn alert_rules_fire_as_their_unit_tests_say() {
    if !have_promtool("alert_rules_fire_as_their_unit_tests_say") {
        return;
    }
    let out = promtool(&["test", "rules", "docs/alerts.test.yml"], None);
    assert!(
        out.status.success(),
        "promtool test rules docs/alerts.test.yml failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn alert_rules_name_only_exported_metrics_and_labels() {
    let rules = ok(
        "reading docs/alerts.yml",
        std::fs::read_to_string(ops::repo_root().join("docs/alerts.yml")),
    );
    let mut used = 0;
    for (i, _) in rules.match_indices("portguard_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Mentions in prose (`portguard_xdp_attached is not 1`) are names too.
        assert!(
            exported().any(|m| m == name),
            "docs/alerts.yml uses {name}, which portguard does not export"
        );
        used += 1;
    }
    assert!(
        used >= 6,
        "docs/alerts.yml names only {used} portguard metrics"
    );
    for label in ["reason=", "result=", "mode=", "iface"] {
        assert!(rules.contains(label), "docs/alerts.yml never uses {label}");
    }
    for bad in ["port=", "addr=", "src=", "dst="] {
        assert!(
            !rules.contains(bad),
            "docs/alerts.yml uses a label portguard does not have: {bad}"
        );
    }
}

/// promtool's linter reads the Prometheus text format (0.0.4) only;
/// portguard serves OpenMetrics, where a counter family's `# TYPE`/`# HELP`
/// name has no `_total` and the body ends with `# EOF`. This maps one to the
/// other and nothing else, so that every lint promtool applies (naming,
/// `_total` on counters, help text, label names, duplicate series) runs on
/// what portguard really exported.
fn openmetrics_to_text(om: &str) -> String {
    let counters: Vec<String> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(str::to_string)
        .collect();
    om.lines()
        .filter(|l| *l != "# EOF")
        .map(|l| {
            for c in &counters {
                for kind in ["# HELP ", "# TYPE "] {
                    if let Some(rest) = l.strip_prefix(&format!("{kind}{c} ")) {
                        return format!("{kind}{c}_total {rest}");
                    }
                }
            }
            l.to_string()
        })
        .map(|l| l + "\n")
        .collect()
}

#[test]
fn a_real_scrape_passes_promtool_check_metrics() {
    if !testkit::require_privileges("a_real_scrape_passes_promtool_check_metrics")
        || !have_promtool("a_real_scrape_passes_promtool_check_metrics")
    {
        return;
    }
    let dir = TempDir::new("alerts");
    let pair = Pair::new("pgalr", 66);
    let _daemon = pair.start(dir.path(), "daemon", &[]);
    pair.send_udp(&[ALLOWED_PORT], 10);
    pair.send_udp(&[FORBIDDEN_PORT], 10);
    let scraped = ops::poll(std::time::Duration::from_secs(5), || {
        let s = pair.scrape();
        (s.sum("portguard_drops_total", &[]) >= 10.0).then_some(s)
    })
    .expect("the forbidden datagrams were never counted");
    assert_eq!(
        scraped.text.lines().last(),
        Some("# EOF"),
        "an OpenMetrics exposition ends with # EOF"
    );
    for name in exported() {
        assert!(
            scraped.samples.iter().any(|s| s.name == name),
            "{name} missing from the scrape:\n{}",
            scraped.text
        );
    }
    let converted = openmetrics_to_text(&scraped.text);
    let out = promtool(&["check", "metrics"], Some(&converted));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics complains ({}):\n{}{}\non:\n{converted}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn openmetrics_counter_families_are_renamed_and_eof_dropped() {
    let om = "# HELP x_packets Packets.\n# TYPE x_packets counter\nx_packets_total{a=\"b\"} 1\n\
              # HELP x_gen Generation.\n# TYPE x_gen gauge\nx_gen 3\n# EOF\n";
    assert_eq!(
        openmetrics_to_text(om),
        "# HELP x_packets_total Packets.\n# TYPE x_packets_total counter\nx_packets_total{a=\"b\"} 1\n\
         # HELP x_gen Generation.\n# TYPE x_gen gauge\nx_gen 3\n"
    );
}
