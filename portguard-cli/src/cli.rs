//! The command line: flags, exit codes and help text (docs/cli.md is
//! generated from these definitions, and so are the man pages).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use portguard::{
    catalog::{AddressesArg, Edition},
    policy::{Mgmt, ProfileArg},
};

use crate::commands::catalog::{ShowFormat, ShowTable};

#[derive(Debug, Parser)]
#[command(
    name = "portguard",
    version = portguard::VERSION,
    about = "Enforce the Skype for Business Server port catalog (2015, 2019) with XDP"
)]
pub struct Cli {
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach and enforce in the foreground until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Validate, show or export the catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Counters of a running (or crashed) instance, read from its pinned maps.
    Stats(StatsArgs),
    /// Remove an attached program that a crashed run left behind.
    Detach(DetachArgs),
    /// Ask a running instance to re-read its catalog (same as SIGHUP).
    Reload(ReloadArgs),
    /// The running daemon's packet events (root only).
    Events(EventsArgs),
    /// A catalog fragment that would open the ports clients asked for (TCP
    /// SYNs, UDP requests) and that were dropped (or would be) since the
    /// daemon started.
    Suggest(SuggestArgs),
    /// A live terminal view of rates and the top dropped flows; `q` quits.
    Top(TopArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Drop what the catalog does not allow.
    Enforce,
    /// Drop nothing; count what would be dropped as `would_drop`.
    Monitor,
}

/// How XDP is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic where the driver lacks it.
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to protect. Repeat it (at most 4) to guard an appliance's
    /// legs with one policy and one flow table: appliance mode.
    #[arg(long, value_name = "IF", required = true)]
    pub iface: Vec<String>,
    /// Appliance mode with a single --iface (a one-armed router): forwarded
    /// traffic is checked against --profile on both sides.
    #[arg(long)]
    pub appliance: bool,
    /// Roles this host runs (comma-separated role ids); the default profile.
    /// Without it, packets to addresses outside every --profile are dropped.
    /// In appliance mode: the roles of the appliance's own addresses
    /// (without it they get the essentials and the lockout guard only).
    #[arg(long, value_name = "R[,R...]", value_delimiter = ',')]
    pub role: Vec<String>,
    /// Per-address roles: packets to CIDR are checked against these roles'
    /// inbound rows; in appliance mode packets from CIDR also against their
    /// outbound rows.
    #[arg(long, value_name = "CIDR=ROLE[,ROLE]")]
    pub profile: Vec<ProfileArg>,
    /// Catalog file replacing the embedded default.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Which embedded catalog: Skype for Business Server 2015, or 2019 (also
    /// Subscription Edition: 2015 without XMPP and Persistent Chat).
    #[arg(long, value_name = "EDITION", default_value = "2015", value_parser = parse_edition, conflicts_with = "catalog")]
    pub edition: Edition,
    /// What to do with what the catalog does not allow.
    #[arg(long, value_enum, default_value = "enforce")]
    pub mode: Mode,
    /// How to attach the XDP program.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub xdp_mode: XdpMode,
    /// Where to serve GET /metrics.
    #[arg(long, default_value = "127.0.0.1:9477", value_name = "ADDR")]
    pub metrics_addr: SocketAddr,
    /// Narrow the client media range, as the SfB setting `ClientMediaPortRange`
    /// does (Microsoft's "Port and protocol requirements for servers" for
    /// Skype for Business Server 2015), at least 20 ports.
    #[arg(long, value_name = "START-END", value_parser = parse_range)]
    pub client_media_ports: Option<(u16, u16)>,
    /// Replace the contents of the catalog's address set ID for this run
    /// (and every reload of it): rules naming it in `peers` pass only peers
    /// in these prefixes, IPv4 or IPv6. `ID=` empties the set, closing its
    /// rules. Repeat for several sets.
    #[arg(long, value_name = "ID=CIDR[,CIDR...]")]
    pub addresses: Vec<AddressesArg>,
    /// Management allowance: TCP to PORT (default 22) from CIDR always passes,
    /// whatever the catalog says. It adds to the default (SSH from anywhere),
    /// which stays unless --no-default-mgmt.
    #[arg(long, value_name = "CIDR[:PORT]")]
    pub mgmt: Vec<Mgmt>,
    /// Remove the default management allowance (TCP 22 from anywhere).
    #[arg(long)]
    pub no_default_mgmt: bool,
    /// Drop ICMP/ICMPv6 echo requests (they pass by default).
    #[arg(long)]
    pub drop_echo: bool,
    /// Drop ESP, AH and IKE towards hosts whose roles terminate media
    /// (they pass by default and are counted as ipsec_on_media_path).
    #[arg(long)]
    pub drop_ipsec_on_media: bool,
    /// Ignore state a previous run left pinned (counters start from zero).
    #[arg(long)]
    pub clean_start: bool,
    /// bpffs mount point for pins.
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,
    /// Leave the program attached and pinned on exit (for a restart without a gap).
    #[arg(long)]
    pub keep_attached: bool,
    /// Protect a loopback interface anyway (refused by default: the policy
    /// would cut the host's own traffic, portguard's metrics included).
    #[arg(long)]
    pub allow_loopback: bool,
    /// Packet events per second per CPU (drops and would-drops); 0 turns
    /// events off. What the budget suppresses is counted.
    #[arg(long, default_value_t = classifier_common::EVENT_RATE_DEFAULT, value_name = "N")]
    pub events_rate: u32,
    /// Emit events for passed packets too (within the same budget).
    #[arg(long)]
    pub events_pass: bool,
    /// Confirmed flows the flow table holds (both sides have spoken; never
    /// evicted, a full table refuses new confirmations). About 100 bytes
    /// each.
    #[arg(long, default_value_t = classifier_common::FLOW_ENTRIES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub flows: u32,
    /// Unconfirmed flows (one side has spoken: a SYN, a first datagram) the
    /// flow table holds; the least recently used go first.
    #[arg(long, default_value_t = classifier_common::FLOW_NEW_ENTRIES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub flows_unconfirmed: u32,
    /// New unconfirmed flows one source (an IPv4 address, an IPv6 /64) may
    /// open per 10 s, forwarded from outside every profile; 0: no limit.
    /// Default: an eighth of --flows-unconfirmed.
    #[arg(long, value_name = "N")]
    pub flow_share: Option<u32>,
    /// Fragmented datagrams in flight whose first fragment's verdict is
    /// remembered; one source may hold an eighth of them per 10 s.
    #[arg(long, default_value_t = classifier_common::FRAGMENT_ENTRIES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(256..=1_048_576))]
    pub fragments: u32,
    /// What the catalog's `payload = "media"` rules do with a UDP datagram
    /// that is not media, comes from an amplification source port or is a
    /// STUN request over its budget: `enforce` drops it, `monitor` passes
    /// it counted as would_drop (whatever --mode says), `off` does not look.
    #[arg(long, value_enum, default_value_t = MediaCheck::Enforce, value_name = "MODE")]
    pub media_check: MediaCheck,
    /// New STUN requests (Binding, Allocate) per second one source (an IPv4
    /// address, an IPv6 /64) may send to a media rule; 0: no limit.
    #[arg(long, default_value_t = classifier_common::media::STUN_SOURCE_RATE_DEFAULT, value_name = "N")]
    pub stun_rate: u32,
    /// Requests one source may send at once above --stun-rate.
    #[arg(long, default_value_t = classifier_common::media::STUN_SOURCE_BURST_DEFAULT, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stun_burst: u32,
    /// The same budget for a whole subnet (an IPv4 /16, an IPv6 /48): what a
    /// flood spoofed across one subnet gets; 0: no limit.
    #[arg(long, default_value_t = classifier_common::media::STUN_NET_RATE_DEFAULT, value_name = "N")]
    pub stun_net_rate: u32,
    /// Requests one subnet may send at once above --stun-net-rate.
    #[arg(long, default_value_t = classifier_common::media::STUN_NET_BURST_DEFAULT, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stun_net_burst: u32,
}

/// `run --media-check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MediaCheck {
    Enforce,
    Monitor,
    Off,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    portguard::policy::parse_port_range(s)
}

fn parse_edition(s: &str) -> Result<Edition, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Validate a catalog; every error with file:line.
    Check {
        /// The catalog file; without it, the embedded catalog of --edition.
        #[arg(required_unless_present = "edition")]
        file: Option<PathBuf>,
        /// Check the embedded catalog of this edition (2015 or 2019) instead of a file.
        #[arg(long, value_name = "EDITION", value_parser = parse_edition, conflicts_with = "file")]
        edition: Option<Edition>,
    },
    /// The effective rules.
    Show {
        /// Only this role, with its inclusions resolved.
        #[arg(long, value_name = "R")]
        role: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ShowFormat,
        /// Which table: the port rules, the IPsec exceptions or the address sets.
        #[arg(long, value_enum, default_value = "rules")]
        table: ShowTable,
        /// Catalog file instead of the embedded default.
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
        /// Which embedded catalog: Skype for Business Server 2015, or 2019
        /// (also Subscription Edition: 2015 without XMPP and Persistent Chat).
        #[arg(long, value_name = "EDITION", default_value = "2015", value_parser = parse_edition, conflicts_with = "catalog")]
        edition: Edition,
        /// Replace an address set's contents, as `run --addresses`.
        #[arg(long, value_name = "ID=CIDR[,CIDR...]")]
        addresses: Vec<AddressesArg>,
    },
    /// The same policy in another firewall's language.
    Export {
        /// Target firewall language.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Roles (comma-separated); every role when absent. With --appliance,
        /// the roles of the appliance's own addresses, none when absent.
        #[arg(long, value_name = "R[,R...]", value_delimiter = ',')]
        role: Vec<String>,
        /// Catalog file instead of the embedded default.
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
        /// Which embedded catalog: Skype for Business Server 2015, or 2019
        /// (also Subscription Edition: 2015 without XMPP and Persistent Chat).
        #[arg(long, value_name = "EDITION", default_value = "2015", value_parser = parse_edition, conflicts_with = "catalog")]
        edition: Edition,
        /// Management allowance to export along (as `run --mgmt`).
        #[arg(long, value_name = "CIDR[:PORT]")]
        mgmt: Vec<Mgmt>,
        /// Leave out the default management allowance (TCP 22 from anywhere).
        #[arg(long)]
        no_default_mgmt: bool,
        /// Appliance mode (as `run` with several --iface): a forward chain
        /// for the traffic between the legs; the input chain keeps the
        /// appliance's own addresses (--role rows if any, the essentials,
        /// the lockout guard).
        #[arg(long)]
        appliance: bool,
        /// Per-address roles, as `run --profile`: packets to CIDR are checked
        /// against the inbound rows of ROLEs (and with --appliance, packets
        /// from CIDR against their outbound rows); longest prefix wins. With
        /// profiles, --role is the default profile, none when absent.
        #[arg(long, value_name = "CIDR=ROLE[,ROLE]")]
        profile: Vec<ProfileArg>,
        /// Replace an address set's contents, as `run --addresses`.
        #[arg(long, value_name = "ID=CIDR[,CIDR...]")]
        addresses: Vec<AddressesArg>,
    },
    /// What differs between two catalogs, row by row: roles and rules added,
    /// removed or changed. Exit 0 whether or not they differ.
    Diff {
        /// `2015` or `2019` (an embedded edition), or a catalog file (write
        /// `./2015` for a file of that name).
        #[arg(value_name = "A")]
        a: String,
        /// The catalog compared with A, written as A is.
        #[arg(value_name = "B")]
        b: String,
    },
    /// Microsoft 365's endpoints JSON (a saved copy of
    /// https://endpoints.office.com/endpoints/worldwide) as the
    /// `microsoft-365` address set, printed as a catalog's TOML.
    ImportEndpoints {
        /// The saved JSON.
        file: PathBuf,
        /// Take the IP ranges of this service area.
        #[arg(long, default_value = "Skype", value_name = "AREA")]
        service_area: String,
        /// The id of the address set printed.
        #[arg(long, default_value = "microsoft-365", value_name = "ID")]
        id: String,
        /// The list's version, for the set's note (the JSON carries none:
        /// https://endpoints.office.com/version/worldwide gives it).
        #[arg(long, value_name = "V")]
        version: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// An nftables ruleset (`nft -f`).
    Nft,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface; every attached instance when absent.
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// bpffs mount point the pins are under.
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to free.
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// bpffs mount point the pins are under. Default: the one the
    /// instance's state file (/run/portguard/IF.json) records, else
    /// `/sys/fs/bpf`.
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Interface of the running instance.
    #[arg(long, value_name = "IF")]
    pub iface: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventVerdict {
    Drop,
    /// As the contract spells it (and the metrics' verdict label).
    #[value(name = "would_drop")]
    WouldDrop,
    Pass,
}

impl EventVerdict {
    pub fn name(self) -> &'static str {
        match self {
            EventVerdict::Drop => "drop",
            EventVerdict::WouldDrop => "would_drop",
            EventVerdict::Pass => "pass",
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// Keep printing new events until interrupted (or --count are printed).
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: EventFormat,
    /// Also write the events' frames (first 128 bytes) to a pcap file. While
    /// following it is flushed at least once a second, and completed on
    /// SIGINT/SIGTERM.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Flush the pcap file after every packet (as tcpdump -U does), not
    /// once a second.
    #[arg(short = 'U', long, requires = "pcap")]
    pub packet_buffered: bool,
    /// Only events of this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<EventVerdict>,
    /// At most N events: the last N kept, or with --follow, stop after N.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Where the daemon's control socket lives.
    #[arg(long, default_value = "/run/portguard", value_name = "DIR")]
    pub run_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// Distinct sources of connection attempts (TCP SYNs) or UDP requests a
    /// port needs to become a rule; ports with fewer are listed as comments.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub min_sources: u64,
    /// Where the daemon's control socket lives.
    #[arg(long, default_value = "/run/portguard", value_name = "DIR")]
    pub run_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// Refresh interval in milliseconds (at least 100).
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    pub interval_ms: u64,
    /// Where the daemon's control socket lives.
    #[arg(long, default_value = "/run/portguard", value_name = "DIR")]
    pub run_dir: PathBuf,
    /// bpffs mount point (the counters are read from the pins).
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    pub bpffs: PathBuf,
}
