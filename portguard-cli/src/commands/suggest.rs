//! `portguard suggest`: the ports the daemon dropped (or, in monitor mode,
//! would have) because no rule allowed them, as `[[rule]]` entries in the
//! catalog's own TOML, for the ports someone asked for a service on.
//!
//! What the daemon says here is what anyone who can send it packets can
//! make it say, so only requests count as evidence (a TCP SYN, a UDP
//! datagram that is not a server's answer), never packets to the ports
//! the host's own connections get their answers on; ports are ranked by
//! distinct sources, capped, merged into ranges, and the fragment is
//! checked, appended to the catalog in force, with the same parser as
//! `catalog check` before it is printed. docs/visibility.md has the rules.

use std::{collections::BTreeMap, fmt::Write as _, io::BufRead as _, path::Path};

use crate::{
    cli::SuggestArgs,
    commands::events::{ClientError, parse_line, request},
};
use portguard::{
    catalog::{Catalog, Direction, Edition, MAX_CATALOG_BYTES, MatchSide, Protocol, read_bounded},
    events::{control::Aggregates, control::Request},
    exit,
};

/// Most ports suggested in one fragment; the rest are counted, not shown.
pub const MAX_SUGGESTED_PORTS: usize = 64;
/// Most lines in each list of ports not suggested.
pub const MAX_NOTED: usize = 16;
/// IANA's dynamic ports (RFC 6335), the ephemeral range of Windows (the
/// Skype for Business servers and clients), BSD and macOS stacks: no
/// service is assigned there, and answers to their connections arrive
/// there.
pub const DYNAMIC_PORTS: (u16, u16) = (49_152, 65_535);
/// Linux's default `net.ipv4.ip_local_port_range`, for a daemon that did
/// not report its own.
pub const LINUX_EPHEMERAL: (u16, u16) = (32_768, 60_999);

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error(
        "the instance runs no --role (per-destination profiles only): add the rules to the role of the profile by hand"
    )]
    NoRole,
    #[error("role {0} is not in the catalog in force")]
    UnknownRole(String),
    #[error("{0}")]
    Catalog(String),
    #[error(
        "the catalog in force is too close to its {MAX_CATALOG_BYTES}-byte limit for any suggestion to be appended"
    )]
    NoRoom,
}

/// How much evidence a port needs and how many ports a fragment may hold.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Distinct sources of requests a port needs to become a rule.
    pub min_sources: u64,
    /// Most ports suggested as rules.
    pub max_ports: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            min_sources: 2,
            max_ports: MAX_SUGGESTED_PORTS,
        }
    }
}

pub fn suggest(args: SuggestArgs) -> u8 {
    let aggregates = match fetch(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("portguard suggest --iface {}: {e}", args.iface);
            return e.exit_code();
        }
    };
    let (catalog, text) =
        match catalog_in_force(aggregates.catalog.as_deref(), aggregates.edition.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("portguard suggest: the catalog in force no longer loads:\n{e}");
                return exit::FAILURE;
            }
        };
    let options = Options {
        min_sources: args.min_sources,
        ..Options::default()
    };
    match fragment(&catalog, &text, &aggregates, options) {
        Ok(text) => {
            print!("{text}");
            exit::OK
        }
        Err(e) => {
            eprintln!("portguard suggest --iface {}: {e}", args.iface);
            match e {
                SuggestError::NoRole | SuggestError::UnknownRole(_) => exit::USAGE,
                SuggestError::Catalog(_) | SuggestError::NoRoom => exit::FAILURE,
            }
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

/// The catalog the daemon runs and its text (what the fragment is
/// appended to), read the way `catalog check` reads it. For the embedded
/// 2019 edition, whose text only lists what it removes from 2015, the
/// fragment is checked appended to the 2015 text, which has every 2019 role.
fn catalog_in_force(
    path: Option<&Path>,
    edition: Option<&str>,
) -> Result<(Catalog, String), String> {
    let Some(path) = path else {
        let edition = match edition {
            None => Edition::Sfb2015,
            Some(word) => word.parse::<Edition>()?,
        };
        return Ok((
            Catalog::edition(edition),
            Catalog::embedded_text().to_string(),
        ));
    };
    let shown = path.display().to_string();
    let bytes = read_bounded(path, MAX_CATALOG_BYTES).map_err(|e| format!("{shown}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| format!("{shown}: not UTF-8: {e}"))?;
    let (catalog, _warnings) = Catalog::parse(&text, &shown).map_err(|e| e.to_string())?;
    Ok((catalog, text))
}

/// One (protocol, port), both verdicts added up.
#[derive(Clone, Debug, Default)]
struct Port {
    proto: String,
    port: u16,
    /// Packets dropped as `port_not_allowed`.
    packets: u64,
    sources: u64,
    sources_capped: bool,
    requests: u64,
    request_sources: u64,
    request_sources_capped: bool,
}

/// Why a port is not suggested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Left {
    /// Requests from fewer than `min_sources` sources.
    Weak,
    /// No request at all.
    NotRequests,
    /// In an ephemeral range.
    Answers,
    /// The catalog file already allows it for the instance's roles.
    Listed,
}

/// Adjacent suggested ports of one protocol: one rule.
#[derive(Debug)]
struct Run {
    proto: String,
    start: u16,
    end: u16,
    requests: u64,
    min_sources: u64,
    max_sources: u64,
    capped: bool,
    /// The rank of its best port (0 = the most distinct sources).
    rank: usize,
}

/// The TOML fragment for `a`, against `catalog` (whose text is
/// `catalog_text`): appended to that text it passes `catalog check`.
pub fn fragment(
    catalog: &Catalog,
    catalog_text: &str,
    a: &Aggregates,
    options: Options,
) -> Result<String, SuggestError> {
    let role = a.roles.first().ok_or(SuggestError::NoRole)?;
    let table = catalog
        .role(role)
        .ok_or_else(|| SuggestError::UnknownRole(role.clone()))?
        .table;
    let mine = catalog
        .resolve_roles(&a.roles)
        .map_err(|e| SuggestError::Catalog(e.to_string()))?;
    // What the catalog file allows the instance, media rows narrowed as
    // the daemon narrows them; a range the file no longer accepts leaves
    // the media rows out (they then allow nothing here).
    let narrowed = a
        .client_media_ports
        .map(|(lo, hi)| catalog.with_client_media(lo, hi));
    let (file, media_known) = match &narrowed {
        Some(Ok(c)) => (c, true),
        Some(Err(_)) => (catalog, false),
        None => (catalog, true),
    };
    let in_force: Vec<_> = file
        .effective_rules(&a.roles)
        .map_err(|e| SuggestError::Catalog(e.to_string()))?
        .into_iter()
        .filter(|r| media_known || !r.media)
        .collect();
    let ephemeral = a.ephemeral.unwrap_or(LINUX_EPHEMERAL);
    let answer_ranges = [ephemeral, DYNAMIC_PORTS];

    let mut ports: BTreeMap<(String, u16), Port> = BTreeMap::new();
    for p in &a.ports {
        if !(p.proto == "tcp" || p.proto == "udp") || p.not_allowed == 0 || p.port == 0 {
            continue;
        }
        let s = ports.entry((p.proto.clone(), p.port)).or_default();
        s.proto.clone_from(&p.proto);
        s.port = p.port;
        s.packets += p.not_allowed;
        s.requests += p.requests;
        // Sources per verdict may overlap: the larger is a floor.
        s.sources = s.sources.max(p.sources);
        s.sources_capped |= p.sources_capped;
        s.request_sources = s.request_sources.max(p.request_sources);
        s.request_sources_capped |= p.request_sources_capped;
    }

    let mut candidates = Vec::new();
    let mut left: BTreeMap<Left, Vec<(Port, String)>> = BTreeMap::new();
    for p in ports.into_values() {
        let why = if answer_ranges
            .iter()
            .any(|&(lo, hi)| lo <= p.port && p.port <= hi)
        {
            Some((Left::Answers, String::new()))
        } else if let Some(r) = in_force.iter().find(|r| {
            r.direction == Direction::Inbound
                && r.side == MatchSide::Destination
                && r.protocol.as_str() == p.proto
                && r.port_start <= p.port
                && p.port <= r.port_end
        }) {
            Some((Left::Listed, format!(" ({}: {:?})", r.role, r.service)))
        } else if p.requests == 0 {
            Some((Left::NotRequests, String::new()))
        } else if p.request_sources < options.min_sources {
            Some((Left::Weak, String::new()))
        } else {
            None
        };
        match why {
            Some((kind, detail)) => left.entry(kind).or_default().push((p, detail)),
            None => candidates.push(p),
        }
    }
    // Distinct sources first: one sender repeating itself is weaker
    // evidence than many senders asking once each.
    candidates.sort_by(|x, y| {
        y.request_sources
            .cmp(&x.request_sources)
            .then(y.requests.cmp(&x.requests))
            .then(x.proto.cmp(&y.proto))
            .then(x.port.cmp(&y.port))
    });
    let capped = candidates.len().saturating_sub(options.max_ports);
    candidates.truncate(options.max_ports);
    let runs = merge(&candidates);

    let context = Context {
        catalog,
        mine: &mine,
        role,
        table: table.as_str(),
        a,
        options,
        ephemeral,
        capped,
        left: &left,
    };
    // Ranked runs are dropped from the end until the catalog with the
    // fragment checks: a limit (size, counter slots) is never passed.
    let mut n = runs.len();
    loop {
        let text = context.render(&runs[..n], runs.len() - n);
        if fits(catalog_text, &text) {
            return Ok(text);
        }
        if n == 0 {
            return Err(SuggestError::NoRoom);
        }
        n /= 2;
    }
}

/// Whether `catalog_text` with `fragment` appended passes `catalog check`.
fn fits(catalog_text: &str, fragment: &str) -> bool {
    if (catalog_text.len() + fragment.len()) as u64 > MAX_CATALOG_BYTES {
        return false;
    }
    let combined = format!("{catalog_text}{fragment}");
    Catalog::parse(&combined, "catalog + suggest").is_ok()
}

/// Adjacent ports of a protocol become one run; runs keep the rank of
/// their best port. Only ports that were each suggested are merged, so a
/// range never opens a port that was not asked for.
fn merge(ranked: &[Port]) -> Vec<Run> {
    let mut by_port: Vec<(usize, &Port)> = ranked.iter().enumerate().collect();
    by_port.sort_by(|(_, x), (_, y)| x.proto.cmp(&y.proto).then(x.port.cmp(&y.port)));
    let mut runs: Vec<Run> = Vec::new();
    for (rank, p) in by_port {
        match runs.last_mut() {
            Some(r) if r.proto == p.proto && u32::from(r.end) + 1 == u32::from(p.port) => {
                r.end = p.port;
                r.requests += p.requests;
                r.min_sources = r.min_sources.min(p.request_sources);
                r.max_sources = r.max_sources.max(p.request_sources);
                r.capped |= p.request_sources_capped;
                r.rank = r.rank.min(rank);
            }
            _ => runs.push(Run {
                proto: p.proto.clone(),
                start: p.port,
                end: p.port,
                requests: p.requests,
                min_sources: p.request_sources,
                max_sources: p.request_sources,
                capped: p.request_sources_capped,
                rank,
            }),
        }
    }
    runs.sort_by_key(|r| r.rank);
    runs
}

struct Context<'a> {
    catalog: &'a Catalog,
    mine: &'a [String],
    role: &'a str,
    table: &'a str,
    a: &'a Aggregates,
    options: Options,
    ephemeral: (u16, u16),
    /// Ports with evidence enough past `max_ports`.
    capped: usize,
    left: &'a BTreeMap<Left, Vec<(Port, String)>>,
}

impl Context<'_> {
    /// The fragment with `runs` as rules; `dropped` more runs were left out
    /// to stay within the catalog's limits.
    fn render(&self, runs: &[Run], dropped: usize) -> String {
        let a = self.a;
        let mut out = String::new();
        // A blank line first: appended to a file whose last line has no
        // newline, the fragment still starts on a line of its own.
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "# portguard suggest --iface {}: traffic {} since the daemon started ({} mode),\n\
             # for role {}. Review it before appending it to\n\
             # {} and reloading (SIGHUP).",
            a.iface,
            if a.mode == "monitor" {
                "that enforcing would drop"
            } else {
                "dropped"
            },
            a.mode,
            self.role,
            a.catalog.as_ref().map_or(
                format!(
                    "the catalog (the embedded {} edition: write it to a file and pass it with --catalog)",
                    a.edition.as_deref().unwrap_or("2015")
                ),
                // A line break in the path would end the comment.
                |p| p.display().to_string().replace(['\n', '\r'], "?")
            ),
        );
        let ports: usize = runs.iter().map(|r| usize::from(r.end - r.start) + 1).sum();
        let _ = writeln!(
            out,
            "# Evidence is a request: a TCP SYN or a UDP datagram that is not a server's\n\
             # answer, from at least {} distinct source(s). Ports are ranked by distinct\n\
             # sources, then packets; at most {} are suggested, adjacent ones as a range.\n\
             # Sources can be forged: a port here was asked for, not proven needed.\n\
             # {} rule(s) for {ports} port(s).",
            self.options.min_sources,
            self.options.max_ports,
            runs.len(),
        );
        if self.capped > 0 {
            let _ = writeln!(
                out,
                "# {} more port(s) with evidence enough were left out (at most {} at a\n\
                 # time). That many ports asked for at once is more likely a scan from\n\
                 # forged sources than services someone needs.",
                self.capped, self.options.max_ports
            );
        }
        if dropped > 0 {
            let _ = writeln!(
                out,
                "# {dropped} more rule(s) were left out: with them the catalog would pass\n\
                 # its limits (size or counter slots, docs/catalog.md \"Limits\")."
            );
        }
        if a.suppressed > 0 {
            let _ = writeln!(
                out,
                "# {} events were suppressed by the budget: counts below are a floor.",
                a.suppressed
            );
        }
        if a.ports_evicted > 0 || a.ports_overflow > 0 {
            let _ = writeln!(
                out,
                "# The daemon keeps {} ports: {} seen only once (a scan's) were forgotten\n\
                 # to make room and {} events found none, so some ports may be missing.",
                portguard::events::store::MAX_PORT_KEYS,
                a.ports_evicted,
                a.ports_overflow
            );
        }
        for r in runs {
            self.rule(&mut out, r);
        }
        self.notes(&mut out);
        self.refused_peers(&mut out);
        out
    }

    /// Peers a rule's address sets left out: comments naming the peer, the
    /// rule and the sets to add it to (a set is not redefined here: the
    /// fragment must still pass `check` appended to the catalog).
    fn refused_peers(&self, out: &mut String) {
        let a = self.a;
        if a.refused_peers.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\n# Not suggested: peers the rules' address sets left out (peer_not_allowed).\n\
             # The port is open to the sets' peers; if one of these is a partner or a\n\
             # pool member, add it to a set the rule names (in the catalog's\n\
             # [[addresses]] or with run --addresses SET=...,PEER/32):"
        );
        for p in a.refused_peers.iter().take(MAX_NOTED) {
            let peer = p.peer.map_or("?".to_string(), |ip| ip.to_string());
            let rule = self
                .catalog
                .effective_rules(&a.roles)
                .ok()
                .and_then(|rules| {
                    rules.into_iter().find(|r| {
                        !r.peers.is_empty()
                            && r.direction == Direction::Inbound
                            && r.protocol.as_str() == p.proto
                            && r.port_start <= p.port
                            && p.port <= r.port_end
                    })
                });
            let named = rule.map_or(String::new(), |r| {
                format!(
                    " ({}: {:?}; sets {})",
                    r.role,
                    r.service,
                    r.peers.join(", ")
                )
            });
            let _ = writeln!(
                out,
                "#   {peer} -> {} {}: {} packet(s) {}{named}",
                p.proto.to_uppercase(),
                p.port,
                p.packets,
                p.verdict,
            );
        }
        let more = a.refused_peers.len().saturating_sub(MAX_NOTED);
        if more > 0 || a.refused_peers_overflow > 0 {
            let _ = writeln!(
                out,
                "#   ... and {more} more, {} event(s) past the daemon's table",
                a.refused_peers_overflow
            );
        }
    }

    fn rule(&self, out: &mut String, r: &Run) {
        let upper = r.proto.to_uppercase();
        let ports = if r.start == r.end {
            r.start.to_string()
        } else {
            format!("{}-{}", r.start, r.end)
        };
        let plus = if r.capped { "+" } else { "" };
        let sources = if r.start == r.end {
            format!("{}{plus} distinct source(s)", r.max_sources)
        } else if r.min_sources == r.max_sources {
            format!("{}{plus} distinct source(s) per port", r.max_sources)
        } else {
            format!(
                "{}-{}{plus} distinct source(s) per port",
                r.min_sources, r.max_sources
            )
        };
        let what = if r.proto == "tcp" { "TCP SYN" } else { "UDP" };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "# {upper} {ports}: {} packet(s) asking for a service ({what}) from {sources}",
            r.requests
        );
        for other in listed_elsewhere(self.catalog, self.mine, &r.proto, r.start, r.end) {
            let _ = writeln!(
                out,
                "# {upper} {ports} is listed for role {other}: add `--role {other}` instead?"
            );
        }
        let _ = writeln!(out, "[[rule]]");
        let _ = writeln!(out, "role = {}", toml_str(self.role));
        let _ = writeln!(
            out,
            "service = {}",
            toml_str(&format!("suggested: {upper} {ports}"))
        );
        let _ = writeln!(out, "protocol = {}", toml_str(&r.proto));
        let _ = writeln!(out, "ports = \"{ports}\"");
        let _ = writeln!(out, "transport = {}", toml_str(&upper));
        let _ = writeln!(out, "table = {}", toml_str(self.table));
        let _ = writeln!(
            out,
            "note = {}",
            toml_str(&format!(
                "Added from portguard suggest on {}: {} request(s) from {sources}.",
                self.a.iface, r.requests
            ))
        );
    }

    /// The ports not suggested, by reason, busiest first: comments only.
    fn notes(&self, out: &mut String) {
        for (kind, ports) in self.left {
            let _ = writeln!(out);
            let head = match kind {
                Left::Weak => format!(
                    "# Not suggested: asked for from fewer than {} distinct sources (a scan,\n\
                     # one client, one forger). `--min-sources 1` makes rules of them:",
                    self.options.min_sources
                ),
                Left::NotRequests => {
                    "# Not suggested: no request among the packets. TCP without a SYN is a\n\
                     # late answer to the host's own connection, backscatter of someone\n\
                     # else's forged SYNs or an ACK scan; UDP from a well-known port to a\n\
                     # high one is a server's answer:"
                        .to_string()
                }
                Left::Answers => format!(
                    "# Not suggested: to the ephemeral ports {}-{} (this host's\n\
                     # net.ipv4.ip_local_port_range) or {}-{} (IANA's dynamic ports, other\n\
                     # stacks' ephemeral range), where answers to connections arrive. A\n\
                     # late answer is no service; open a service there by hand:",
                    self.ephemeral.0, self.ephemeral.1, DYNAMIC_PORTS.0, DYNAMIC_PORTS.1
                ),
                Left::Listed => {
                    "# Not suggested: the catalog file already allows them for the instance's\n\
                     # roles (dropped before the last reload, or outside --client-media-ports):"
                        .to_string()
                }
            };
            let _ = writeln!(out, "{head}");
            let mut ports: Vec<&(Port, String)> = ports.iter().collect();
            ports.sort_by(|(x, _), (y, _)| {
                y.packets
                    .cmp(&x.packets)
                    .then(x.proto.cmp(&y.proto))
                    .then(x.port.cmp(&y.port))
            });
            for (p, detail) in ports.iter().take(MAX_NOTED) {
                let (count, capped) = if *kind == Left::Weak {
                    (p.request_sources, p.request_sources_capped)
                } else {
                    (p.sources, p.sources_capped)
                };
                let _ = writeln!(
                    out,
                    "#   {} {}: {} packet(s), {} request(s), from {}{} source(s){detail}",
                    p.proto.to_uppercase(),
                    p.port,
                    p.packets,
                    p.requests,
                    count,
                    if capped { "+" } else { "" },
                );
            }
            if ports.len() > MAX_NOTED {
                let _ = writeln!(out, "#   ... and {} more", ports.len() - MAX_NOTED);
            }
        }
    }
}

/// Roles outside the instance's whose inbound rows (other than the client
/// media rows) list `proto` ports in `start..=end`.
fn listed_elsewhere(
    catalog: &Catalog,
    mine: &[String],
    proto: &str,
    start: u16,
    end: u16,
) -> Vec<String> {
    let mut roles: Vec<String> = catalog
        .rules
        .iter()
        .filter(|r| !mine.contains(&r.role))
        // The client media rows span 1024-65535: naming them for every
        // port would say nothing.
        .filter(|r| !r.media)
        .filter(|r| r.direction == Direction::Inbound && r.side == MatchSide::Destination)
        .filter(|r| r.port_start <= end && start <= r.port_end)
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
mod tests;
