//! Reading portguard's metrics endpoint: a minimal HTTP GET and a parser
//! for the exposition text (the operations tests use them too, through
//! `ops`), the endpoint read from inside a scenario's namespace, and the
//! live line `cargo xtask run` prints while the traffic flows.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{METRICS, check_interrupted};
use crate::netns::{NetNs, in_netns, thread_in};

/// The counters of the portguard in `ns`, read from inside it.
pub(crate) fn scrape(ns: &NetNs) -> Result<Scrape> {
    let text = in_netns(ns, || http_get(METRICS, "/metrics"))?.map_err(anyhow::Error::msg)?;
    Scrape::try_parse(&text)
}

/// Polls until the endpoint in `ns` answers (it does once the daemon has
/// attached and serves), at most `within`.
pub(crate) fn wait_answering(ns: &NetNs, within: Duration, interrupted: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + within;
    while scrape(ns).is_err() {
        check_interrupted(interrupted)?;
        if Instant::now() > deadline {
            bail!(
                "portguard's metrics endpoint did not answer within {} s",
                within.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The sum of `name` over the samples matching `labels` (see
/// [`Scrape::sum`]), 0 when there was no scrape. Never `-0`: an empty
/// float sum is -0.0, which would print as such.
pub fn sum(metrics: Option<&Scrape>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics.map_or(0.0, |m| m.sum(name, labels)) + 0.0
}

/// A line of live totals (packets passed and dropped) every half second
/// from the endpoint in a namespace, until dropped.
pub(crate) struct Live {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Live {
    pub(crate) fn start(ns: &NetNs) -> Result<Live> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread_in(ns, move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(text) = http_get(METRICS, "/metrics") {
                        let total = |verdict: &str| -> f64 {
                            text.lines()
                                .filter_map(parse_sample)
                                .filter(|s| {
                                    s.name == "portguard_packets_total"
                                        && s.label("verdict") == verdict
                                })
                                .map(|s| s.value)
                                .sum()
                        };
                        println!(
                            "   live: {:>5} passed {:>5} dropped",
                            total("pass") as u64,
                            total("drop") as u64
                        );
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })?
        };
        Ok(Live {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`; the body (portguard's
/// responder always sends Content-Length and closes).
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &addr.parse::<SocketAddr>().map_err(|e| e.to_string())?,
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("response not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}{path}: {head}"));
    }
    Ok(body.to_string())
}

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }

    /// `name{k="v",...}`, labels sorted: a stable series identity.
    pub fn series(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// A parsed exposition (Prometheus text or OpenMetrics).
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The exposition in `text`; a sample line that does not parse is an
    /// error that quotes it.
    pub fn try_parse(text: &str) -> Result<Scrape> {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| parse_sample(l).with_context(|| format!("unparsable sample line {l:?}")))
            .collect::<Result<_>>()?;
        Ok(Scrape {
            text: text.to_string(),
            samples,
        })
    }

    /// [`Scrape::try_parse`] for a test: a line that does not parse fails it.
    pub fn parse(text: &str) -> Scrape {
        Scrape::try_parse(text).expect("an exposition whose every sample parses")
    }

    /// Sum of the samples of `name` whose labels all match `labels`
    /// (`k=!v` means "not v").
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels.iter().all(|(k, v)| match v.strip_prefix('!') {
                    Some(not) => s.label(k) != not,
                    None => s.label(k) == *v,
                })
        })
    }

    /// The only sample of `name` with `labels`; panics if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {name}{labels:?} sample, found {found:?}\n{}",
            self.text
        );
        found[0].value
    }

    /// Every counter-like sample (name ending in `_total`) by series.
    pub fn counters(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name.ends_with("_total"))
            .map(|s| (s.series(), s.value))
            .collect()
    }
}

/// `name{k="v",...} value` or `name value` (an optional timestamp ignored).
pub fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            // key
            let mut key = String::new();
            loop {
                let (i, c) = chars.next()?;
                match c {
                    '=' => break,
                    '}' if key.is_empty() => {
                        end = i;
                        rest = &inner[end + 1..];
                        return finish(name, labels, rest);
                    }
                    _ => key.push(c),
                }
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    _ => value.push(c),
                }
            }
            labels.insert(key.trim().to_string(), value);
            match chars.next()? {
                (_, ',') => {
                    if let Some((i, '}')) = chars.peek().copied() {
                        end = i;
                        break;
                    }
                }
                (i, '}') => {
                    end = i;
                    break;
                }
                _ => return None,
            }
        }
        rest = &inner[end + 1..];
    }
    finish(name, labels, rest)
}

fn finish(name: &str, labels: BTreeMap<String, String>, rest: &str) -> Option<Sample> {
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_quoted_commas_braces_and_escapes() {
        let s = parse_sample(
            r#"portguard_packets_total{iface="x0",role="front-end",service="A, B {c} \"d\"",proto="udp",verdict="pass"} 42"#,
        )
        .expect("no parse");
        assert_eq!(s.name, "portguard_packets_total");
        assert_eq!(s.label("service"), r#"A, B {c} "d""#);
        assert_eq!(s.label("verdict"), "pass");
        assert_eq!(s.value, 42.0);
        let g = parse_sample("portguard_catalog_generation 7").expect("no parse");
        assert!(g.labels.is_empty());
        assert_eq!(g.value, 7.0);
        assert_eq!(parse_sample("garbage"), None);
    }
}
