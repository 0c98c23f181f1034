//! A real Prometheus scrapes portguard: both run in the server namespace
//! (Prometheus on that namespace's loopback, scraping every second), traffic
//! comes from the client namespace, and everything is checked through
//! Prometheus' HTTP API, so the exposition is proven to be what a Prometheus
//! accepts and stores:
//! - `portguard_packets_total{verdict="pass"}` and
//!   `portguard_drops_total{reason="port_not_allowed"}` exist and move by
//!   exactly what was sent;
//! - every metric of docs/metrics.md is there with exactly its label names;
//! - no label value is a port, a range or an address, and traffic to 20 new
//!   ports from as many source ports adds no series;
//! - every panel of the Grafana dashboard docs/grafana/portguard.json
//!   returns series, after allowed, dropped and would-drop traffic.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use portguard::metric_families::{FAMILIES, PORT_LABELLED};
use serde_json::Value;
use testkit::netns::{NetNs, spawn_in};
use testkit::ops::{self, ALLOWED_PORT, FORBIDDEN_PORT, Pair, TempDir, ok, ok_any, poll};

const PROMETHEUS: &str = "127.0.0.1:9090";

/// The one metric whose `port` label is allowed.
const TOP_PORTS: &str = PORT_LABELLED;

/// Prometheus as a child in the server namespace; killed on drop.
struct Prometheus {
    child: Child,
    ns: String,
}

impl Prometheus {
    fn start(server: &NetNs, dir: &std::path::Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        ok(
            "writing prometheus.yml",
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     scrape_configs:\n  - job_name: portguard\n    static_configs:\n      - targets: ['{}']\n",
                    ops::METRICS
                ),
            ),
        );
        let log = ok(
            "prometheus log file",
            std::fs::File::create(dir.join("prometheus.log")),
        );
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        ok_any("setns pre_exec", spawn_in(server, &mut cmd));
        Prometheus {
            child: ok("starting prometheus", cmd.spawn()),
            ns: server.name().to_string(),
        }
    }

    /// GET on Prometheus' API with curl in the server namespace; the `data`.
    fn api(&self, path: &str, query: Option<&str>) -> Option<Value> {
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.ns)).ok()?;
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "--max-time", "3", "-G"])
            .arg(format!("http://{PROMETHEUS}{path}"));
        if let Some(q) = query {
            cmd.arg("--data-urlencode").arg(format!("query={q}"));
        }
        enter(&mut cmd, ns);
        let out = cmd.output().ok()?;
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// An instant query: (labels, value) per series.
    fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(data) = self.api("/api/v1/query", Some(q)) else {
            return Vec::new();
        };
        data["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        let labels = r["metric"]
                            .as_object()?
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect();
                        let value = r["value"][1].as_str()?.parse().ok()?;
                        Some((labels, value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of a query that yields one series (a `sum(...)`), or None.
    fn scalar(&self, q: &str) -> Option<f64> {
        match self.query(q).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// Polls until `q` equals `want`; panics with the last value otherwise.
    fn wait_for(&self, q: &str, want: f64, within: Duration) {
        if poll(within, || (self.scalar(q) == Some(want)).then_some(())).is_none() {
            panic!(
                "Prometheus: {q} = {:?}, expected {want} (within {within:?})",
                self.scalar(q)
            );
        }
    }
}

/// Makes `cmd` enter the network namespace open at `ns` (setns in pre_exec).
fn enter(cmd: &mut Command, ns: std::fs::File) {
    use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `ns` lives in the closure until
    // `cmd` is dropped.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A label value that would make cardinality unbounded: a number (a port),
/// a port range, an address or an address:port.
fn looks_raw(v: &str) -> bool {
    let numeric_range = v
        .split_once('-')
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
    v.parse::<u64>().is_ok()
        || numeric_range
        || v.parse::<IpAddr>().is_ok()
        || v.parse::<std::net::SocketAddr>().is_ok()
        || v.split('/')
            .next()
            .is_some_and(|a| a.parse::<IpAddr>().is_ok())
}

const RULE_UDP_PASS: &str =
    r#"sum(portguard_packets_total{job="portguard",proto="udp",verdict="pass",role!="-"})"#;
const NOT_ALLOWED: &str =
    r#"sum(portguard_drops_total{job="portguard",reason="port_not_allowed"})"#;

#[test]
fn a_real_prometheus_scrapes_every_metric_and_sees_it_move() {
    if !testkit::require_privileges("prometheus: real scrape") {
        return;
    }
    if !testkit::require_program("prometheus: real scrape", "prometheus", "prometheus") {
        return;
    }
    let dir = TempDir::new("prometheus");
    let pair = Pair::new("pgprom", 64);
    let _daemon = pair.start(dir.path(), "daemon", &[]);
    let prom = Prometheus::start(&pair.server, dir.path());
    if poll(Duration::from_secs(20), || {
        (prom.scalar(r#"up{job="portguard"}"#) == Some(1.0)).then_some(())
    })
    .is_none()
    {
        panic!(
            "Prometheus never scraped portguard successfully: targets {:?}\nlog: {}",
            prom.api("/api/v1/targets", None),
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }

    // Phase 1: allowed and forbidden UDP; the counters appear with exactly that.
    pair.send_udp(&[ALLOWED_PORT], 50);
    pair.send_udp(&[FORBIDDEN_PORT], 30);
    prom.wait_for(RULE_UDP_PASS, 50.0, Duration::from_secs(15));
    prom.wait_for(NOT_ALLOWED, 30.0, Duration::from_secs(15));
    let pass = prom.query(r#"portguard_packets_total{verdict="pass"}"#);
    assert!(
        !pass.is_empty(),
        "no portguard_packets_total{{verdict=\"pass\"}} series"
    );
    let series_of = |q: &str| -> BTreeSet<BTreeMap<String, String>> {
        prom.query(q).into_iter().map(|(l, _)| l).collect()
    };
    let udp_series_q = r#"portguard_packets_total{proto="udp"} or portguard_drops_total"#;
    let udp_series = series_of(udp_series_q);

    // Phase 2: 20 more allowed ports and 20 more forbidden ones, from fresh
    // source ports: the counters move by exactly that, the series stay.
    let media: Vec<u16> = (50_000..50_020).collect();
    let low: Vec<u16> = (1..=20).collect();
    pair.send_udp(&media, 5);
    pair.send_udp(&low, 2);
    prom.wait_for(RULE_UDP_PASS, 150.0, Duration::from_secs(15));
    prom.wait_for(NOT_ALLOWED, 70.0, Duration::from_secs(15));
    assert_eq!(
        series_of(udp_series_q),
        udp_series,
        "traffic to new ports from new source ports created new series"
    );
    let bytes = prom
        .scalar(r#"sum(portguard_bytes_total{proto="udp",verdict="pass",role!="-"})"#)
        .expect("no portguard_bytes_total for the allowed UDP");
    // Ethernet + IPv4 + UDP headers alone are 42 bytes a datagram.
    assert!(
        bytes >= 150.0 * 42.0,
        "portguard_bytes_total {bytes} is less than the headers of 150 datagrams"
    );

    // Every metric of docs/metrics.md, with exactly its label names.
    let all = prom.query(r#"{__name__=~"portguard_.*",job="portguard"}"#);
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (labels, _) in &all {
        let name = labels.get("__name__").cloned().unwrap_or_default();
        let keys: BTreeSet<&str> = labels
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "__name__" | "job" | "instance"))
            .collect();
        // The families' list, which docs/metrics.md is checked against;
        // the flow families' `kind` is there for the tables that hold kinds
        // (not for `fragments`).
        let Some(want) = FAMILIES.iter().find(|f| f.name == name).map(|f| f.labels) else {
            panic!("{name} is not a metric of docs/metrics.md: {labels:?}");
        };
        let kindless = labels.get("table").is_some_and(|t| t == "fragments");
        let want: BTreeSet<&str> = want
            .iter()
            .copied()
            .filter(|k| !(kindless && *k == "kind"))
            .collect();
        assert_eq!(
            keys, want,
            "{name} has labels {keys:?}, docs/metrics.md says {want:?}"
        );
        for (k, v) in labels {
            if matches!(k.as_str(), "__name__" | "job" | "instance")
                || (name == TOP_PORTS && k == "port")
            {
                continue;
            }
            assert!(
                !looks_raw(v),
                "{name}: label {k}={v:?} is a raw port or address (unbounded cardinality)"
            );
        }
        *names.entry(name).or_default() += 1;
    }
    for name in FAMILIES.iter().map(|f| f.name) {
        assert!(
            names.contains_key(name),
            "Prometheus has no {name}; it has {names:?}"
        );
    }
    let top_series = names.get(TOP_PORTS).copied().unwrap_or(0);
    assert!(
        top_series <= 2 * 20,
        "{top_series} series of {TOP_PORTS}: at most 20 per verdict"
    );
    let one = |q: &str| {
        prom.scalar(q)
            .unwrap_or_else(|| panic!("Prometheus: no single series for {q}"))
    };
    assert_eq!(
        one(&format!(
            r#"portguard_xdp_attached{{iface="{}",mode="native"}}"#,
            pair.server_if
        )),
        1.0
    );
    assert_eq!(one("portguard_catalog_generation"), 1.0);
    assert_eq!(one(r#"portguard_reloads_total{result="ok"}"#), 0.0);
    assert_eq!(one(r#"portguard_reloads_total{result="error"}"#), 0.0);
    for role in ["front-end", "client"] {
        let rules = one(&format!(r#"portguard_catalog_rules{{role="{role}"}}"#));
        assert!(
            rules > 0.0,
            "portguard_catalog_rules{{role={role}}} = {rules}"
        );
    }
    let verdicts: BTreeSet<String> = prom
        .query("portguard_packets_total")
        .into_iter()
        .filter_map(|(l, _)| l.get("verdict").cloned())
        .collect();
    assert!(
        verdicts
            .iter()
            .all(|v| ["pass", "drop", "would_drop"].contains(&v.as_str())),
        "verdict values {verdicts:?}"
    );

    // Prometheus saw no scrape problem at all.
    let targets = prom
        .api("/api/v1/targets", None)
        .expect("no /api/v1/targets");
    let active = &targets["activeTargets"][0];
    assert_eq!(active["health"], "up", "target: {active}");
    assert_eq!(active["lastError"], "", "target: {active}");
}

/// The PromQL of every panel of docs/grafana/portguard.json, with the
/// panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// What Grafana substitutes before it sends a query: the `iface` variable
/// (a regex: one interface here) and the built-in intervals.
fn substitute(expr: &str, iface: &str) -> String {
    expr.replace("${iface}", iface)
        .replace("$iface", iface)
        .replace("$__rate_interval", "20s")
        .replace("$__range", "5m")
}

fn read_dashboard() -> Value {
    let path = ops::repo_root().join("docs/grafana/portguard.json");
    let text = ok(
        "reading docs/grafana/portguard.json",
        std::fs::read_to_string(&path),
    );
    ok(
        "parsing docs/grafana/portguard.json",
        serde_json::from_str(&text),
    )
}

#[test]
fn the_dashboard_is_import_ready() {
    let d = read_dashboard();
    assert_eq!(d["uid"], "portguard", "dashboard uid");
    assert_eq!(d["title"], "portguard", "dashboard title");
    let inputs = d["__inputs"].as_array().cloned().unwrap_or_default();
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input: {inputs:?}"
    );
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let iface = vars
        .iter()
        .find(|v| v["name"] == "iface")
        .unwrap_or_else(|| panic!("no iface template variable: {vars:?}"));
    assert_eq!(
        iface["datasource"]["uid"], "${DS_PROMETHEUS}",
        "iface variable's datasource"
    );
    let queries = dashboard_queries(&d);
    assert!(!queries.is_empty(), "the dashboard has no query");
    for panel in d["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {} does not use the DS_PROMETHEUS input",
            panel["title"]
        );
    }
    // Every metric of the contract is on the dashboard.
    for name in FAMILIES.iter().map(|f| f.name) {
        let base = name.trim_end_matches("_total");
        assert!(
            queries.iter().any(|(_, q)| q.contains(base)),
            "no panel shows {name}"
        );
    }
    for (title, q) in &queries {
        if q.contains("portguard_packets_total")
            || q.contains("portguard_bytes_total")
            || q.contains("portguard_drops_total")
            || q.contains("portguard_xdp_attached")
        {
            assert!(
                q.contains("$iface"),
                "panel {title:?} ignores the iface variable: {q}"
            );
        }
    }
}

#[test]
fn every_dashboard_panel_returns_series_from_a_real_prometheus() {
    if !testkit::require_privileges("prometheus: dashboard queries") {
        return;
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus is not installed (Debian package `prometheus`; `cargo xtask setup` installs it)"
        );
        eprintln!("SKIP dashboard test: prometheus is not installed");
        return;
    }
    let dashboard = read_dashboard();
    let dir = TempDir::new("grafana");
    let pair = Pair::new("pggraf", 70);
    // Enforce first, so that drops are counted; then monitor mode takes the
    // program over (counters continue), so that would-drops are too.
    let mut enforcing = pair.start(dir.path(), "enforce", &["--keep-attached"]);
    pair.send_udp(&[ALLOWED_PORT], 20);
    pair.send_udp(&[FORBIDDEN_PORT], 20);
    enforcing.signal(libc::SIGTERM);
    let st = enforcing.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "enforcing run: {st}\n{}", enforcing.log());
    let monitoring = pair.start(dir.path(), "monitor", &["--mode", "monitor"]);
    let prom = Prometheus::start(&pair.server, dir.path());
    if poll(Duration::from_secs(20), || {
        (prom.scalar(r#"up{job="portguard"}"#) == Some(1.0)).then_some(())
    })
    .is_none()
    {
        panic!(
            "Prometheus never scraped portguard: {:?}",
            prom.api("/api/v1/targets", None)
        );
    }
    // A good reload, so that the reload panels have something to show.
    monitoring.signal(libc::SIGHUP);
    monitoring.wait_log("reload: catalog generation", Duration::from_secs(10));
    // Traffic while Prometheus scrapes: rates need two samples that differ.
    for _ in 0..5 {
        pair.send_udp(&[ALLOWED_PORT], 10);
        pair.send_udp(&[FORBIDDEN_PORT], 10);
        std::thread::sleep(Duration::from_millis(600));
    }

    // The iface variable's query, as Grafana asks it.
    let values = poll(Duration::from_secs(10), || {
        prom.api(
            "/api/v1/label/iface/values?match[]=portguard_xdp_attached",
            None,
        )
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    })
    .expect("label_values(portguard_xdp_attached, iface) is empty");
    assert!(
        values
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == pair.server_if.as_str())),
        "the iface variable offers {values}, not {}",
        pair.server_if
    );

    let queries = dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        let q = substitute(expr, &pair.server_if);
        if poll(Duration::from_secs(15), || {
            (!prom.query(&q).is_empty()).then_some(())
        })
        .is_none()
        {
            panic!("panel {title:?}: {q} returns no series from Prometheus");
        }
    }
    drop(monitoring);
}

#[test]
fn grafana_variables_are_substituted_like_grafana_does() {
    assert_eq!(
        substitute(
            r#"sum(rate(portguard_packets_total{iface=~"$iface"}[$__rate_interval])) + sum(increase(x{iface=~"${iface}"}[$__range]))"#,
            "eth0"
        ),
        r#"sum(rate(portguard_packets_total{iface=~"eth0"}[20s])) + sum(increase(x{iface=~"eth0"}[5m]))"#
    );
}

#[test]
fn raw_values_are_recognised() {
    for raw in [
        "161",
        "50000-50019",
        "198.18.0.2",
        "2001:db8::2",
        "198.18.0.0/24",
        "127.0.0.1:9477",
    ] {
        assert!(looks_raw(raw), "{raw} not recognised as raw");
    }
    for fine in [
        "pgproms",
        "front-end",
        "port_not_allowed",
        "-",
        "A/V Conferencing",
        "udp",
    ] {
        assert!(!looks_raw(fine), "{fine} wrongly taken for raw");
    }
}
