//! The types the rest of portguard sees.

use std::{fmt, net::IpAddr};

/// An L4 protocol, after `both` is split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The protocols a catalog `protocol` word names (`both` is both), or
    /// `None` for an unknown word.
    pub(crate) fn from_catalog_word(word: &str) -> Option<Vec<Protocol>> {
        match word {
            "tcp" => Some(vec![Protocol::Tcp]),
            "udp" => Some(vec![Protocol::Udp]),
            "both" => Some(vec![Protocol::Tcp, Protocol::Udp]),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which port of an inbound packet a rule's range is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchSide {
    /// The packet's L4 destination port: the host listens there.
    Destination,
    /// The peer's port: inbound replies come from it, so connection tracking
    /// (or the DHCP essential) passes them and the rule compiles to nothing.
    Source,
}

impl MatchSide {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchSide::Destination => "destination",
            MatchSide::Source => "source",
        }
    }
}

impl fmt::Display for MatchSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule's UDP datagrams may carry (`payload` in the catalog).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Payload {
    /// Anything: the port decides.
    #[default]
    Any,
    /// Media only (RFC 7983/9443 and the Microsoft variants): a UDP
    /// datagram that is not is refused as `not_media`, one from an
    /// amplification source port as `reflection`, a STUN request over its
    /// source's budget as `rate_limited` (docs/packet-policy.md). TCP is
    /// not checked.
    Media,
}

impl Payload {
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Any => "any",
            Payload::Media => "media",
        }
    }

    pub(crate) fn from_word(word: &str) -> Option<Payload> {
        [Payload::Any, Payload::Media]
            .into_iter()
            .find(|p| p.as_str() == word)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which address of a packet is the role's, for a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The packet's destination is an address of the role (it arrives there).
    Inbound,
    /// The packet's source is an address of the role: a connection or
    /// exchange the role opens, to anywhere.
    Outbound,
}

impl Direction {
    pub(crate) const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    pub(crate) fn from_word(word: &str) -> Option<Direction> {
        Direction::ALL.into_iter().find(|d| d.as_str() == word)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Microsoft's "Port and protocol requirements for servers" (Skype for
/// Business Server 2015), in the MicrosoftDocs/OfficeDocs-SkypeForBusiness
/// repository; the catalog's server, load-balancer and client rows come from
/// its zh-CN edition.
pub const SERVER_PORTS_DOCUMENT: &str =
    "Skype/SfbServer/plan-your-deployment/network-requirements/ports-and-protocols.md";
/// "Edge Server environmental requirements in Skype for Business Server".
pub const EDGE_DOCUMENT: &str = "Skype/SfbServer/plan-your-deployment/edge-server-deployments/edge-environmental-requirements.md";
/// "Port summary - Reverse proxy in Lync Server 2013": the 2015 documents
/// describe the reverse proxy's ports only in prose.
pub const REVERSE_PROXY_DOCUMENT: &str =
    "Lync/LyncServer/lync-server-2013-port-summary-reverse-proxy.md";
/// "Plan hybrid connectivity between Skype for Business Server 2015 and
/// Skype for Business Online": its "Port and protocol requirements" table.
pub const HYBRID_DOCUMENT: &str =
    "Skype/SfbServer/skype-for-business-hybrid-solutions/plan-hybrid-connectivity.md";
/// "Microsoft 365 URLs and IP address ranges", in the repository
/// MicrosoftDocs/microsoft-365-docs (its tables are generated into
/// `microsoft-365/includes/office-365-worldwide-endpoints.md`).
pub const M365_ENDPOINTS_DOCUMENT: &str = "microsoft-365/enterprise/urls-and-ip-address-ranges.md";

/// The published table a rule or role comes from (the type keeps its
/// historical name: the first tables were those of the server ports document).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeedTable {
    Server,
    Hlb,
    DnsLb,
    Client,
    EdgeExternal,
    EdgeInternal,
    EdgeVipExternal,
    EdgeVipInternal,
    ReverseProxyExternal,
    ReverseProxyInternal,
    /// Skype for Business hybrid: the Edge Server to and from Microsoft 365.
    Hybrid,
    /// Microsoft 365's "Skype for Business Online and Microsoft Teams" endpoints.
    M365Endpoints,
}

impl SeedTable {
    pub const ALL: [SeedTable; 12] = [
        SeedTable::Server,
        SeedTable::Hlb,
        SeedTable::DnsLb,
        SeedTable::Client,
        SeedTable::EdgeExternal,
        SeedTable::EdgeInternal,
        SeedTable::EdgeVipExternal,
        SeedTable::EdgeVipInternal,
        SeedTable::ReverseProxyExternal,
        SeedTable::ReverseProxyInternal,
        SeedTable::Hybrid,
        SeedTable::M365Endpoints,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SeedTable::Server => "server",
            SeedTable::Hlb => "hlb",
            SeedTable::DnsLb => "dns-lb",
            SeedTable::Client => "client",
            SeedTable::EdgeExternal => "edge-external",
            SeedTable::EdgeInternal => "edge-internal",
            SeedTable::EdgeVipExternal => "edge-vip-external",
            SeedTable::EdgeVipInternal => "edge-vip-internal",
            SeedTable::ReverseProxyExternal => "reverse-proxy-external",
            SeedTable::ReverseProxyInternal => "reverse-proxy-internal",
            SeedTable::Hybrid => "hybrid",
            SeedTable::M365Endpoints => "m365-endpoints",
        }
    }

    /// The table's heading in its document, in English (for the server ports
    /// document, as the Planning Tool's report names it).
    pub fn title(self) -> &'static str {
        match self {
            SeedTable::Server => "Required server ports (by server role)",
            SeedTable::Hlb => "Hardware load balancer ports if using only hardware load balancing",
            SeedTable::DnsLb => "Hardware load balancer ports if using DNS load balancing",
            SeedTable::Client => "Required client ports",
            SeedTable::EdgeExternal => "External port firewall summary table",
            SeedTable::EdgeInternal => "Internal port firewall summary table",
            SeedTable::EdgeVipExternal => {
                "Hardware load balancers for Edge port tables: External interface Virtual IPs"
            }
            SeedTable::EdgeVipInternal => {
                "Hardware load balancers for Edge port tables: Internal interface Virtual IPs"
            }
            SeedTable::ReverseProxyExternal => {
                "Firewall Details for Reverse Proxy Server: External Interface"
            }
            SeedTable::ReverseProxyInternal => {
                "Firewall Details for Reverse Proxy Server: Internal Interface"
            }
            SeedTable::Hybrid => "Port and protocol requirements",
            SeedTable::M365Endpoints => "Skype for Business Online and Microsoft Teams",
        }
    }

    /// The document the table is in: its path in MicrosoftDocs/OfficeDocs-SkypeForBusiness
    /// (MicrosoftDocs/microsoft-365-docs for [`SeedTable::M365Endpoints`]).
    pub fn document(self) -> &'static str {
        match self {
            SeedTable::Server | SeedTable::Hlb | SeedTable::DnsLb | SeedTable::Client => {
                SERVER_PORTS_DOCUMENT
            }
            SeedTable::EdgeExternal
            | SeedTable::EdgeInternal
            | SeedTable::EdgeVipExternal
            | SeedTable::EdgeVipInternal => EDGE_DOCUMENT,
            SeedTable::ReverseProxyExternal | SeedTable::ReverseProxyInternal => {
                REVERSE_PROXY_DOCUMENT
            }
            SeedTable::Hybrid => HYBRID_DOCUMENT,
            SeedTable::M365Endpoints => M365_ENDPOINTS_DOCUMENT,
        }
    }

    pub(crate) fn from_word(word: &str) -> Option<SeedTable> {
        SeedTable::ALL.into_iter().find(|t| t.as_str() == word)
    }
}

impl fmt::Display for SeedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a catalog, located by 1-based line and column
/// (line 0: not about a place in a file, e.g. an I/O error or a flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub(crate) origin: String,
    pub line: usize,
    pub(crate) column: usize,
    pub severity: Severity,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.origin, self.severity, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.origin, self.line, self.column, self.severity, self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// How the diagnostic that stands for the ones not shown begins.
const OMITTED_PREFIX: &str = "... and ";

fn plural(n: usize, word: &str) -> String {
    format!("{n} more {word}{}", if n == 1 { "" } else { "s" })
}

impl Diagnostic {
    /// Stands for the findings past the first [`super::MAX_DIAGNOSTICS`],
    /// placed at the earliest of them.
    pub(crate) fn omitted(
        origin: &str,
        (line, column): (usize, usize),
        errors: usize,
        warnings: usize,
    ) -> Diagnostic {
        Diagnostic {
            origin: origin.to_string(),
            line,
            column,
            severity: if errors > 0 {
                Severity::Error
            } else {
                Severity::Warning
            },
            message: format!(
                "{OMITTED_PREFIX}{} and {} from here on, not shown",
                plural(errors, "error"),
                plural(warnings, "warning")
            ),
            hint: Some(format!(
                "only the first {} findings are shown; fix them and check again",
                super::MAX_DIAGNOSTICS
            )),
        }
    }

    /// The errors and warnings this diagnostic stands for, if it stands for
    /// the ones not shown.
    pub(crate) fn omitted_counts(&self) -> Option<(usize, usize)> {
        let rest = self.message.strip_prefix(OMITTED_PREFIX)?;
        let mut numbers = rest
            .split_whitespace()
            .filter_map(|w| w.parse::<usize>().ok());
        Some((numbers.next()?, numbers.next()?))
    }
}

/// (errors, warnings) among these diagnostics, the ones not shown included.
pub fn count_findings(diagnostics: &[Diagnostic]) -> (usize, usize) {
    diagnostics
        .iter()
        .fold((0, 0), |(e, w), d| match (d.omitted_counts(), d.severity) {
            (Some((oe, ow)), _) => (e + oe, w + ow),
            (None, Severity::Error) => (e + 1, w),
            (None, Severity::Warning) => (e, w + 1),
        })
}

/// A catalog that cannot be used. Holds every error found, and the warnings
/// found along the way, in file order.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct CatalogError {
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl CatalogError {
    pub(crate) fn single(d: Diagnostic) -> Self {
        CatalogError {
            diagnostics: vec![d],
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// A role of the catalog: one row label (or one address) of a published table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleDef {
    pub id: String,
    pub label: String,
    pub table: SeedTable,
    pub includes: Vec<String>,
    pub why: String,
    /// Hosts of the role (or of a role including it) are on a media path,
    /// where the IPsec exception table asks for IPsec to be off: IKE, ESP
    /// and AH towards them are `ipsec_on_media_path`.
    pub media_path: bool,
    pub(crate) line: usize,
}

/// One rule as the catalog states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub role: String,
    pub service: String,
    pub protocols: Vec<Protocol>,
    /// The range in force: a media rule's is the client media range.
    pub port_start: u16,
    pub port_end: u16,
    /// The range as written in the file (a media rule's range may only be narrowed).
    pub(crate) declared: (u16, u16),
    pub(crate) transport: String,
    pub(crate) table: SeedTable,
    pub(crate) note: String,
    pub side: MatchSide,
    /// `inbound` unless the rule says otherwise.
    pub direction: Direction,
    pub media: bool,
    /// What its UDP datagrams may carry.
    pub payload: Payload,
    /// The address sets the packet's remote side (the source of an inbound
    /// rule, the destination of an outbound one) must be in, any of them;
    /// empty: any peer.
    pub peers: Vec<String>,
    /// The line of the rule's `[[rule]]` header.
    pub(crate) line: usize,
}

impl Rule {
    /// One entry per protocol.
    pub(crate) fn expand(&self) -> impl Iterator<Item = EffectiveRule> + '_ {
        self.protocols.iter().map(move |&protocol| EffectiveRule {
            role: self.role.clone(),
            service: self.service.clone(),
            protocol,
            port_start: self.port_start,
            port_end: self.port_end,
            transport: self.transport.clone(),
            table: self.table,
            side: self.side,
            direction: self.direction,
            note: self.note.clone(),
            line: self.line,
            media: self.media,
            payload: self.payload,
            peers: self.peers.clone(),
        })
    }
}

/// A row of the IPsec exception table of the server ports document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpsecException {
    pub name: String,
    pub source: String,
    pub destination: String,
    pub protocol: String,
    pub source_ports: String,
    pub destination_ports: String,
    pub authentication: String,
    pub(crate) line: usize,
}

/// A release of Skype for Business Server whose tables a catalog holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Edition {
    /// Skype for Business Server 2015: the published tables as they are.
    Sfb2015,
    /// Skype for Business Server 2019, which Subscription Edition follows:
    /// the 2015 tables without the features 2019 removed (XMPP, Persistent Chat).
    Sfb2019,
}

impl Edition {
    pub const ALL: [Edition; 2] = [Edition::Sfb2015, Edition::Sfb2019];

    /// The word `--edition`, `edition = ` and `base = ` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Edition::Sfb2015 => "2015",
            Edition::Sfb2019 => "2019",
        }
    }

    pub fn from_word(word: &str) -> Option<Edition> {
        Edition::ALL.into_iter().find(|e| e.as_str() == word)
    }

    /// The product's name, for headings.
    pub fn product(self) -> &'static str {
        match self {
            Edition::Sfb2015 => "Skype for Business Server 2015",
            Edition::Sfb2019 => "Skype for Business Server 2019 and Subscription Edition",
        }
    }
}

impl fmt::Display for Edition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--edition` and `catalog diff` read an edition from its word.
impl std::str::FromStr for Edition {
    type Err = String;

    fn from_str(s: &str) -> Result<Edition, String> {
        Edition::from_word(s).ok_or_else(|| {
            format!(
                "unknown edition `{s}`; expected one of: {}",
                Edition::ALL.map(Edition::as_str).join(", ")
            )
        })
    }
}

/// An IPv4 or IPv6 prefix of an address set, its host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// `192.0.2.0/24`, `2001:db8::/32`, or an address alone (a host prefix).
    /// Host bits must be clear: `10.1.2.3/8` is refused rather than widened
    /// or narrowed behind the operator's back.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{text}`: `{ip}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "`{text}`: `/{l}` is not a prefix length for {} (0-{max})",
                        if max == 32 { "IPv4" } else { "IPv6" }
                    ));
                }
            },
        };
        let network = Cidr::network(addr, len);
        if network != addr {
            return Err(format!(
                "`{text}` has host bits set; the network is {network}/{len}"
            ));
        }
        Ok(Cidr { addr, len })
    }

    fn network(addr: IpAddr, len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && Cidr::network(ip, self.len) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Where an address set's contents come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetSource {
    /// `cidrs` (and `file`, if any) in the catalog.
    Catalog,
    /// `run --addresses ID=...`, which replaces the catalog's contents.
    Flag,
}

/// An `[[addresses]]` set: the peers a rule naming it may talk with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSet {
    pub id: String,
    /// Sorted, each once: the inline `cidrs`, then the file's.
    pub cidrs: Vec<Cidr>,
    /// The `file` as written (relative to the catalog file).
    pub file: Option<String>,
    pub note: String,
    pub source: SetSource,
    pub(crate) line: usize,
}

/// `run --addresses ID=CIDR[,CIDR...]`: the set's contents for this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressesArg {
    pub id: String,
    pub cidrs: Vec<Cidr>,
}

impl std::str::FromStr for AddressesArg {
    type Err = String;
    /// `federation-partners=192.0.2.0/24,2001:db8::/32`; `ID=` alone
    /// empties the set (its rules then match nothing).
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, list) = s
            .split_once('=')
            .ok_or("expected ID=CIDR[,CIDR...] (an empty list empties the set)")?;
        let id = id.trim();
        if id.is_empty() {
            return Err("no set id before `=`".into());
        }
        let mut cidrs = list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()?;
        cidrs.sort();
        cidrs.dedup();
        Ok(AddressesArg {
            id: id.to_string(),
            cidrs,
        })
    }
}

/// A parsed, valid catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    pub origin: String,
    /// The release the file says its tables are for (`edition = "2019"`),
    /// if it says.
    pub edition: Option<Edition>,
    pub rules: Vec<Rule>,
    pub roles: Vec<RoleDef>,
    pub ipsec: Vec<IpsecException>,
    /// The `[[addresses]]` sets, in catalog order.
    pub addresses: Vec<AddressSet>,
    /// The range media rules use (inclusive).
    pub client_media: (u16, u16),
    /// UDP source ports whose datagrams to a `payload = "media"` rule are
    /// reflection (amplification) answers unless they answer a recorded
    /// flow: `[settings] reflection_ports`, sorted, no duplicates.
    pub reflection_ports: Vec<u16>,
}

/// A rule for one protocol, as a host running some roles sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveRule {
    /// The role that owns the rule (may be one the requested role includes).
    pub role: String,
    pub service: String,
    pub protocol: Protocol,
    pub port_start: u16,
    pub port_end: u16,
    pub transport: String,
    pub table: SeedTable,
    pub side: MatchSide,
    pub direction: Direction,
    pub note: String,
    pub line: usize,
    pub media: bool,
    pub payload: Payload,
    /// As [`Rule::peers`].
    pub peers: Vec<String>,
}

impl EffectiveRule {
    pub(crate) fn width(&self) -> u32 {
        u32::from(self.port_end) - u32::from(self.port_start)
    }

    pub fn ports_text(&self) -> String {
        ports_text(self.port_start, self.port_end)
    }
}

pub(crate) fn ports_text(start: u16, end: u16) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// Ports `start..=end` of `protocol` belong to `rules[rule]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortAssignment {
    pub(crate) protocol: Protocol,
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) rule: usize,
}
