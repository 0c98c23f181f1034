//! Types and layout constants shared by the portguard XDP program and its loader.
//!
//! Every map value here is `#[repr(C)]`, has no padding and no `bool`, so that
//! both sides agree byte for byte and userspace can treat it as plain bytes.
#![no_std]

use bytemuck::{Pod, Zeroable};

pub mod media;

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "portguard";
/// Name of the XDP program the packet path tail-calls for a media rule's
/// datagram that is not plainly media (docs/packet-policy.md, "Media
/// payload").
pub const MEDIA_PROGRAM: &str = "portguard_media";
/// Name of the TC egress program that records the host's own flows.
pub const TC_EGRESS_PROGRAM: &str = "portguard_egress";

/// Names of the maps, as the loader and the pin directory see them.
pub mod map_names {
    pub const CONFIG: &str = "CONFIG";
    pub const PORT_BLOCKS: &str = "PORT_BLOCKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const PROFILES: &str = "PROFILES";
    pub const MGMT: &str = "MGMT";
    /// Confirmed flows: both sides have spoken (a hash, never evicted).
    pub const FLOWS: &str = "FLOWS";
    /// Unconfirmed flows: one side has spoken (an LRU).
    pub const FLOWS_NEW: &str = "FLOWS_NEW";
    /// Per-source shares of the unconfirmed flows and the fragments.
    pub const FLOW_SHARES: &str = "FLOW_SHARES";
    /// Per-CPU counts of the flow tables' inserts, promotions and refusals.
    pub const FLOW_STATS: &str = "FLOW_STATS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// Tests only: in the object built with the eBPF crate's `trace` feature
    /// (classifier-user's `test-hooks`), absent from the shipped one.
    pub const TRACE: &str = "TRACE";
    pub const FLOW_PORTS: &str = "FLOW_PORTS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_CONFIG: &str = "EVENT_CONFIG";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    /// The address sets of the rules that name one (`PeerAddr`), both generations.
    pub const PEERS: &str = "PEERS";
    /// Per-CPU caches, not pinned: a new program starts them empty.
    pub const RECENT_FLOWS: &str = "RECENT_FLOWS";
    pub const RECENT_ANSWERS: &str = "RECENT_ANSWERS";
    pub const SEL_CACHE: &str = "SEL_CACHE";
    pub const PEER_CACHE: &str = "PEER_CACHE";
    /// Per-source STUN budgets: not pinned, a new program starts every
    /// source with a full bucket.
    pub const STUN_BUDGET: &str = "STUN_BUDGET";
    /// Per generation, one bit per UDP source port: the catalog's
    /// amplification ports (`reflection_ports`).
    pub const REFLECTION_PORTS: &str = "REFLECTION_PORTS";
    /// Rule slot -> its media index + 1 (0: not a media rule).
    pub const MEDIA_INDEX: &str = "MEDIA_INDEX";
    /// The media program, for the XDP program's tail call; and what the
    /// caller hands it (per CPU). A new program fills them afresh.
    pub const MEDIA_PROG: &str = "MEDIA_PROG";
    pub const MEDIA_SCRATCH: &str = "MEDIA_SCRATCH";
    /// The program's maps that are not pinned (every other one is in `ALL`).
    pub const UNPINNED: [&str; 7] = [
        RECENT_FLOWS,
        RECENT_ANSWERS,
        SEL_CACHE,
        PEER_CACHE,
        STUN_BUDGET,
        MEDIA_PROG,
        MEDIA_SCRATCH,
    ];
    /// Every map, in the order they are pinned.
    pub const ALL: [&str; 18] = [
        CONFIG,
        PORT_BLOCKS,
        COUNTERS,
        PROFILES,
        MGMT,
        FLOWS,
        FLOWS_NEW,
        FLOW_SHARES,
        FLOW_STATS,
        FRAGMENTS,
        TRACE,
        FLOW_PORTS,
        EVENTS,
        EVENT_CONFIG,
        EVENT_BUDGET,
        REFLECTION_PORTS,
        MEDIA_INDEX,
        PEERS,
    ];
}

/// The traffic that passes whatever the catalog says (docs/packet-policy.md,
/// "Other protocols" and "Decision"): the one definition the XDP program
/// decides by and the nftables export writes its rules from.
pub mod essentials {
    /// ICMP (IPv4) errors the stack needs: destination unreachable
    /// (fragmentation needed among them, for path MTU discovery), time
    /// exceeded, parameter problem.
    pub const fn icmp4_error(icmp_type: u8) -> bool {
        matches!(icmp_type, 3 | 11 | 12)
    }
    pub const ICMP4_ECHO_REPLY: u8 = 0;
    pub const ICMP4_ECHO_REQUEST: u8 = 8;
    /// ICMPv6 errors: destination unreachable, packet too big, time
    /// exceeded, parameter problem.
    pub const fn icmp6_error(icmp_type: u8) -> bool {
        matches!(icmp_type, 1..=4)
    }
    pub const ICMP6_ECHO_REQUEST: u8 = 128;
    pub const ICMP6_ECHO_REPLY: u8 = 129;
    /// MLD query, report and done, router and neighbour solicitation and
    /// advertisement, MLDv2 report: what IPv6 needs to find its neighbours.
    /// Redirect (137) is left out on purpose.
    pub const fn icmp6_neighbor_discovery(icmp_type: u8) -> bool {
        matches!(icmp_type, 130..=136 | 143)
    }
    /// DHCP server to client (UDP source port, destination port), IPv4 and
    /// IPv6: a host's lease must not depend on its catalog.
    pub const DHCP_REPLIES: [(u16, u16); 2] = [(67, 68), (547, 546)];
    pub const fn dhcp_reply(sport: u16, dport: u16) -> bool {
        (sport == DHCP_REPLIES[0].0 && dport == DHCP_REPLIES[0].1)
            || (sport == DHCP_REPLIES[1].0 && dport == DHCP_REPLIES[1].1)
    }
    /// IKE (UDP), counted as IPsec on a media path.
    pub const IKE_PORTS: [u16; 2] = [500, 4500];
    pub const fn ike_port(port: u16) -> bool {
        port == IKE_PORTS[0] || port == IKE_PORTS[1]
    }
    /// ESP and AH, counted as IPsec on a media path.
    pub const IPPROTO_ESP: u8 = 50;
    pub const IPPROTO_AH: u8 = 51;
}

/// L4 protocol index used in the port arrays.
pub const PROTO_TCP: u32 = 0;
pub const PROTO_UDP: u32 = 1;
pub const PROTO_COUNT: u32 = 2;

/// Ports are packed four to an array entry: the kernel rounds array values up
/// to 8 bytes, so four `u16` rule slots cost what one would.
pub const PORTS_PER_BLOCK: u32 = 4;
pub const BLOCKS_PER_PROTO: u32 = 65_536 / PORTS_PER_BLOCK;

/// Destination profiles (per-destination role sets). Profile 0 is the default.
pub const MAX_PROFILES: u32 = 8;
/// Two copies of every profile's port arrays: the packet path reads the one
/// `Config::generation` names while userspace rewrites the other.
pub const GENERATIONS: u32 = 2;
/// Rule directions: inbound rows match a packet whose destination is the
/// profile's address, outbound rows one whose source is (appliance mode only;
/// a host's own outbound connections are recorded by the egress program).
pub const DIR_INBOUND: u32 = 0;
pub const DIR_OUTBOUND: u32 = 1;
pub const DIRECTIONS: u32 = 2;
pub const PORT_BLOCK_ENTRIES: u32 =
    MAX_PROFILES * GENERATIONS * DIRECTIONS * PROTO_COUNT * BLOCKS_PER_PROTO;

/// "No profile": in `Config::default_profile` it means packets to an address
/// outside every `--profile` are dropped; in `ProfileSel` it means the prefix
/// does not exist in that generation.
pub const PROFILE_NONE: u32 = u32::MAX;

/// Index of the entry of `PORT_BLOCKS` holding `port`.
#[inline(always)]
pub const fn port_block_index(
    profile: u32,
    generation: u32,
    direction: u32,
    proto: u32,
    port: u16,
) -> u32 {
    (((profile * GENERATIONS + generation) * DIRECTIONS + direction) * PROTO_COUNT + proto)
        * BLOCKS_PER_PROTO
        + (port as u32 / PORTS_PER_BLOCK)
}

/// Four consecutive ports' rule slots; 0 means no rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortBlock {
    pub slots: [u16; PORTS_PER_BLOCK as usize],
}

/// Rule slots 1..MAX_RULE_SLOTS index `COUNTERS` directly; slot 0 is "no rule".
pub const MAX_RULE_SLOTS: u32 = 16_384;

/// A `PortBlock` slot with this bit set is a rule that names address sets
/// (`peers`): the packet passes by it only if its remote side is in
/// `PEERS` under the rule's slot. Slots are below `MAX_RULE_SLOTS` (14
/// bits), so neither this bit nor the media bit (`media::MEDIA_SLOT_FLAG`,
/// bit 15) collides with one; the rule's counter is the slot without them.
/// Rules without sets keep the plain slot, and their packets never touch
/// `PEERS`.
pub const SLOT_PEERS: u16 = 1 << 14;
/// The rule slot (its counter) of a `PortBlock` slot value, without the
/// peers and media bits.
pub const SLOT_MASK: u16 = (1 << 14) - 1;
const _: () = assert!(
    MAX_RULE_SLOTS == SLOT_MASK as u32 + 1,
    "rule slots fill the bits below SLOT_PEERS and the media bit"
);

/// Prefixes `PEERS` holds: each prefix of a rule's sets once per rule slot
/// and generation (both generations are present while a reload runs).
pub const PEER_ENTRIES: u32 = 65_536;

/// The data of a `PEERS` LPM trie key (after the kernel's prefix length):
/// the rule (`scope` = generation << 16 | slot, big-endian, always matched
/// in full) then the peer address (IPv4 mapped, as in `PROFILES`). The
/// prefix length counts the 32 bits of `scope`: a set's IPv4 /24 is
/// 32 + 96 + 24. One trie serves both families, like `PROFILES` and `MGMT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerAddr {
    pub scope: [u8; 4],
    pub addr: Addr,
}

/// Bits of `PeerAddr::scope` in a `PEERS` key's prefix length.
pub const PEER_SCOPE_BITS: u32 = 32;

/// `PeerAddr::scope` of a rule slot in a generation.
#[inline(always)]
pub const fn peer_scope(generation: u32, slot: u16) -> [u8; 4] {
    ((generation << 16) | (slot & SLOT_MASK) as u32).to_be_bytes()
}

/// Most ports one management prefix allows.
pub const MGMT_PORTS: usize = 8;

/// `Config::flags`.
pub const FLAG_MONITOR: u32 = 1 << 0;
pub const FLAG_DROP_ECHO: u32 = 1 << 1;
pub const FLAG_DROP_IPSEC_MEDIA: u32 = 1 << 2;
/// Tests only: write each packet's counter index to `TRACE[0]`, so a test can
/// see exactly which verdict and reason one frame got. The shipped object
/// (built without the eBPF crate's `trace` feature) ignores the bit.
pub const FLAG_TRACE: u32 = 1 << 3;
/// Appliance mode: the program guards forwarded traffic on several legs.
/// Outbound rows match by source profile (when the source sits behind the
/// leg the packet arrived on), the lockout guard covers only the
/// appliance's own addresses, and counters are kept per leg.
pub const FLAG_APPLIANCE: u32 = 1 << 4;
/// `run --media-check monitor`: a datagram a media rule refuses
/// (`not_media`, `reflection`, `rate_limited`) passes, counted as
/// `would_drop`, even in enforce mode. (`--media-check off` compiles the
/// rules without their media flag: no cost at all.)
pub const FLAG_MEDIA_MONITOR: u32 = 1 << 5;

/// Most interfaces (legs) one instance guards; `COUNTERS` has one full set
/// of entries per leg.
pub const MAX_LEGS: u32 = 4;

/// Emit packet events for drop and would_drop verdicts into `EVENTS`. High
/// bits, clear of the policy flags, because the daemon sets them apart from
/// the policy and a reload keeps them.
pub const FLAG_EVENTS: u32 = 1 << 16;
/// With `FLAG_EVENTS`: emit events for passed packets too.
pub const FLAG_EVENTS_PASS: u32 = 1 << 17;

/// Per-generation part of the configuration, switched with the port arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GenConfig {
    /// Profile for destinations no `--profile` prefix matches, or `PROFILE_NONE`.
    pub default_profile: u32,
    /// Bit p set: profile p runs a role that terminates media (IPsec accounting).
    pub media_profiles: u32,
    /// Catalog generation counter, shown by stats and metrics.
    pub catalog_generation: u32,
    /// Non-zero when `PROFILES` has prefixes for this generation; when zero
    /// the packet path skips the trie lookup.
    pub has_prefixes: u32,
    /// Bit p set: profile p has outbound rows (appliance mode). Zero spares
    /// the packet path the source-side trie lookup.
    pub outbound_profiles: u32,
    /// A number no earlier install wrote (see [`next_sel_epoch`]). While
    /// this generation is in force, `PROFILES` gives every address the same
    /// answer, so the packet path caches its answers per CPU (`SEL_CACHE`)
    /// under this number: the flip to a new generation retires them all.
    /// 0 (a `CONFIG` no install has written) never matches a cache entry.
    pub sel_epoch: u32,
}

/// The `GenConfig::sel_epoch` for the next install: one more than either
/// generation's, never 0. It is read from `CONFIG`, which is pinned, so it
/// keeps growing across daemon restarts and no two installs share one until
/// it wraps, after 2^32 installs (136 years at one a second).
pub const fn next_sel_epoch(gens: &[GenConfig; GENERATIONS as usize]) -> u32 {
    let (a, b) = (gens[0].sel_epoch, gens[1].sel_epoch);
    let next = (if a > b { a } else { b }).wrapping_add(1);
    if next == 0 { 1 } else { next }
}

/// `Config::fast_block_base` for a generation: the fast path decides a
/// packet with one lookup at this base only on a host whose every local
/// address has the default profile.
pub const fn fast_block_base(
    default_profile: u32,
    generation: u32,
    has_prefixes: bool,
    appliance: bool,
) -> u32 {
    if default_profile == PROFILE_NONE || has_prefixes || appliance {
        0
    } else {
        1 + port_block_index(default_profile, generation, DIR_INBOUND, 0, 0)
    }
}

/// The `PORT_BLOCKS` entry holding (`proto`, `port`) in the fast table at
/// `base` (a non-zero [`fast_block_base`]).
#[inline(always)]
pub const fn fast_block_index(base: u32, proto: u32, port: u16) -> u32 {
    base - 1 + proto * BLOCKS_PER_PROTO + port as u32 / PORTS_PER_BLOCK
}

/// The generation the fast table at `base` belongs to (a non-zero
/// [`fast_block_base`]): the packet path reads it from the base, not from
/// `Config::generation`, which is written in the same update but may be read
/// across it.
#[inline(always)]
pub const fn fast_block_generation(base: u32) -> u32 {
    ((base - 1) / (DIRECTIONS * PROTO_COUNT * BLOCKS_PER_PROTO)) % GENERATIONS
}

/// The single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// The generation the packet path reads (0 or 1). Flipping it is the
    /// atomic step of a reload.
    pub generation: u32,
    pub flags: u32,
    pub gens: [GenConfig; GENERATIONS as usize],
    /// Every port some `--mgmt` allowance opens (0 = unused): only packets to
    /// one of these pay for the `MGMT` trie lookup.
    pub mgmt_ports: [u16; MGMT_PORTS],
    /// Appliance mode: the ifindex of each leg; a packet's counters go to the
    /// set of the leg it arrived on (0 = unused slot; unknown ifindex = leg 0).
    pub legs: [u32; MAX_LEGS as usize],
    /// The host fast path's table in the generation in force: 1 + the
    /// `PORT_BLOCKS` index of the default profile's inbound TCP port 0 (UDP
    /// follows at `BLOCKS_PER_PROTO`), or 0 when that generation has no fast
    /// path (no default profile, `--profile` prefixes, or appliance mode): see
    /// [`fast_block_base`]. It is written with the flip, in the same update
    /// as `generation`, and names its generation itself, so the fast path
    /// reads one word where it would read `generation` and then `gens`; a
    /// packet that reads it as the flip lands uses one whole table, old or new.
    pub fast_block_base: u32,
    /// New unconfirmed flows one source prefix (an IPv4 /32, an IPv6 /64)
    /// may open per `FLOW_SHARE_WINDOW_S`; past it the entry is refused.
    /// 0 = no limit.
    pub flow_share: u32,
    /// First fragments one source prefix may have remembered in `FRAGMENTS`
    /// per `FLOW_SHARE_WINDOW_S`. 0 = no limit.
    pub fragment_share: u32,
    /// The STUN budget of a source prefix (an IPv4 address, an IPv6 /64):
    /// microseconds of credit one request costs (`media::cost_us`; 0 = no
    /// limit) and the bucket's room, in requests.
    pub stun_source_cost_us: u32,
    pub stun_source_burst: u32,
    /// The same for a subnet (an IPv4 /16, an IPv6 /48).
    pub stun_net_cost_us: u32,
    pub stun_net_burst: u32,
}

/// Value of the `PROFILES` LPM trie: the address's profile in each generation,
/// and (appliance mode) whether it is one of the appliance's own addresses,
/// which is what the lockout guard covers there, and the leg it sits behind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ProfileSel {
    pub by_generation: [u32; GENERATIONS as usize],
    pub local_by_generation: [u32; GENERATIONS as usize],
    /// The leg the prefix sits behind (the kernel's route to it), as a leg
    /// index + 1; 0: behind no leg. Appliance mode applies a profile's
    /// outbound rows only to packets that arrive on that leg, so a frame
    /// that claims an Edge Server's address on the internet leg is not one
    /// of the Edge's own (strict reverse-path check, RFC 3704).
    pub leg_by_generation: [u32; GENERATIONS as usize],
}

/// Value of the `MGMT` LPM trie (keyed by source address): TCP destination
/// ports always allowed from that prefix. Userspace folds the ports of every
/// shorter containing prefix into each entry, because an LPM lookup returns
/// only the longest match. 0 marks an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MgmtPorts {
    pub ports: [u16; MGMT_PORTS],
}

/// Addresses in LPM keys and flow keys are IPv6; IPv4 is stored IPv4-mapped
/// (`::ffff:a.b.c.d`), so one trie serves both families.
pub type Addr = [u8; 16];

/// Key of the `PROFILES` and `MGMT` tries, laid out as the kernel's
/// `struct bpf_lpm_trie_key` (prefix length first, then the address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LpmKey {
    pub prefix_len: u32,
    pub addr: Addr,
}

/// Key of `FLOWS` and `FLOWS_NEW`: an expected answer, written by the egress
/// recorder from the side of the packet that left (local = its source): "a
/// packet from remote:remote_port to local:local_port arriving on `leg` is
/// an answer". XDP looks up arriving packets with source and destination
/// swapped into this shape. 8-byte aligned: the eBPF side copies addresses
/// into it with 8-byte stores, which the verifier accepts on the stack only
/// when aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub remote: Addr,
    pub local: Addr,
    pub remote_port: u16,
    pub local_port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The leg the recorded packet left by (its index in `Config::legs`):
    /// its answer must arrive there. A frame planted on another leg is no
    /// answer, whatever its addresses.
    pub leg: u8,
    pub pad: [u8; 2],
}

/// Value of `FLOWS` and `FLOWS_NEW`. Times are seconds of the coarse
/// monotonic clock (`CLOCK_MONOTONIC_COARSE`, which userspace reads too).
/// 8-byte aligned: built on the eBPF stack, where LLVM stores it in
/// 8-byte words, which the verifier accepts only when aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowState {
    /// When a packet of the flow was last seen, either way (refreshed when
    /// `mark` moves on, so at most a few times a second).
    pub seen: u32,
    /// When the entry was made.
    pub created: u32,
    /// `bpf_jiffies64() >> FLOW_MARK_SHIFT` at the last refresh: while it
    /// stands still, the packet path reads no clock.
    pub mark: u32,
    /// `FLOW_ANSWERED`, `FLOW_CLOSING`.
    pub flags: u32,
}

/// `FlowState::flags`: an answer has been seen (UDP; a TCP entry is
/// confirmed by its first answer past the handshake instead).
pub const FLOW_ANSWERED: u32 = 1 << 0;
/// A FIN or RST has been seen: the entry expires after `FLOW_CLOSING_S`.
pub const FLOW_CLOSING: u32 = 1 << 1;
/// `FLOWS_NEW` only: `FLOWS` was full when the entry was to be confirmed;
/// the packet path tries again when `FlowState::mark` moves on.
pub const FLOW_CONFIRM_REFUSED: u32 = 1 << 2;

/// Jiffies per refresh mark, as a shift: 2^8 jiffies is 0.26 s at HZ=1000,
/// 1 s at HZ=250, 2.6 s at HZ=100: far finer than any timeout.
pub const FLOW_MARK_SHIFT: u32 = 8;

/// A UDP entry whose answer came at least this long after it was made, and
/// that had been answered before, is a stream, not a query and its reply:
/// it is confirmed (Linux conntrack's rule for `ASSURED` UDP).
pub const FLOW_UDP_STREAM_S: u32 = 2;

/// Idle timeouts, in seconds, applied by the daemon's sweeper. Confirmed
/// TCP: RFC 5382 (REQ-5, at least 2 h 4 min). Confirmed UDP: RFC 4787
/// (REQ-5, at least 2 min; conntrack keeps a UDP stream 180 s).
pub const FLOW_TCP_CONFIRMED_S: u32 = 7_440;
pub const FLOW_UDP_CONFIRMED_S: u32 = 180;
/// Unconfirmed entries: a handshake or a query left unanswered.
pub const FLOW_TCP_UNCONFIRMED_S: u32 = 60;
pub const FLOW_UDP_UNCONFIRMED_S: u32 = 30;
/// After a FIN or RST.
pub const FLOW_CLOSING_S: u32 = 10;

/// The idle timeout of an entry of `FLOWS` (`confirmed`) or `FLOWS_NEW`.
pub const fn flow_timeout_s(proto: u8, flags: u32, confirmed: bool) -> u32 {
    if flags & FLOW_CLOSING != 0 {
        FLOW_CLOSING_S
    } else if proto == 6 {
        if confirmed {
            FLOW_TCP_CONFIRMED_S
        } else {
            FLOW_TCP_UNCONFIRMED_S
        }
    } else if confirmed {
        FLOW_UDP_CONFIRMED_S
    } else {
        FLOW_UDP_UNCONFIRMED_S
    }
}

/// Key of `FLOW_SHARES`: a source prefix (an IPv4 address, or the /64 of an
/// IPv6 address: the first two words of the mapped form, or its last two
/// for IPv4, which cannot collide with an IPv6 /64 outside ::ffff:0:0/96)
/// and which table the share is of.
/// 8-byte aligned: built on the eBPF stack, where LLVM stores it in
/// 8-byte words, which the verifier accepts only when aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ShareKey {
    pub prefix: [u32; 2],
    /// `SHARE_FLOWS` or `SHARE_FRAGMENTS`.
    pub kind: u32,
    pub pad: u32,
}

pub const SHARE_FLOWS: u32 = 0;
pub const SHARE_FRAGMENTS: u32 = 1;

/// Value of `FLOW_SHARES`: entries made in the current window.
/// 8-byte aligned: built on the eBPF stack, where LLVM stores it in
/// 8-byte words, which the verifier accepts only when aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Share {
    /// Coarse-clock seconds / `FLOW_SHARE_WINDOW_S`.
    pub window: u32,
    pub count: u32,
}

/// The window of a per-source share, in seconds.
pub const FLOW_SHARE_WINDOW_S: u32 = 10;
/// Sources whose shares are kept at once (an LRU: a source it forgets
/// starts a new window, which a spoofed flood of many sources gets anyway).
pub const FLOW_SHARE_ENTRIES: u32 = 16_384;

/// `FLOW_STATS` (a per-CPU array of u64) indexes.
pub const STAT_NEW_INSERTS: u32 = 0;
/// Unconfirmed entries refused: the source's share was spent.
pub const STAT_NEW_REFUSED: u32 = 1;
/// Unconfirmed entries confirmed (moved to `FLOWS`).
pub const STAT_PROMOTED: u32 = 2;
/// Confirmations refused: `FLOWS` was full (the entry stays unconfirmed).
pub const STAT_CONFIRMED_REFUSED: u32 = 3;
pub const STAT_FRAGMENT_INSERTS: u32 = 4;
/// First fragments not remembered: the source's share was spent.
pub const STAT_FRAGMENT_REFUSED: u32 = 5;
/// Entries the daemon's sweeper removed, idle (it adds to the first CPU's
/// slot), so that evictions can be told from expiries.
pub const STAT_CONFIRMED_EXPIRED: u32 = 6;
pub const STAT_NEW_EXPIRED: u32 = 7;
pub const FLOW_STAT_ENTRIES: u32 = 8;

/// `FLOW_PORTS` has one byte per local port, set by the egress recorder when
/// the host opens a flow from that port. A zero byte proves no flow can match,
/// so the packet path skips the `FLOWS` hash lookup. Bytes rather than bits:
/// two CPUs setting neighbouring ports must not undo each other's store.
pub const FLOW_PORTS_PER_ENTRY: u32 = 8;
pub const FLOW_PORT_ENTRIES: u32 = 65_536 / FLOW_PORTS_PER_ENTRY;

/// Slots of the per-CPU `RECENT_FLOWS` cache in front of the `FLOWS` lookup
/// a recorder makes on every UDP datagram it sees.
pub const RECENT_FLOW_SLOTS: u32 = 1_024;
/// Datagrams of one flow that skip the `FLOWS` lookup after one that made
/// it: the entry is looked up (and its LRU reference refreshed, or the entry
/// re-inserted if it was evicted) on one datagram in 64.
pub const RECENT_FLOW_SKIPS: u32 = 63;

/// A `RECENT_FLOWS` slot: the hash of the flow last looked at through it,
/// how many more of its packets may skip the lookup, and the refresh mark
/// (`FlowState::mark`) they may skip it in: a slot older than that is
/// stale, so that a flow whose entry was lost while it was quiet is
/// recorded again at its next packet, not 63 packets later.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RecentFlow {
    pub tag: u64,
    pub skips: u32,
    pub mark: u32,
}

/// Slots of the per-CPU `SEL_CACHE` in front of the `PROFILES` trie: the
/// addresses an appliance forwards to (an Edge pool, the servers behind a
/// reverse proxy) are few, and each answer saves a trie walk.
pub const SEL_CACHE_SLOTS: u32 = 256;

/// A `SEL_CACHE` slot: an address and what `PROFILES` answered for it while
/// the generation with `sel_epoch` was in force. The address is held as
/// four words, as the packet path builds it, so that a hit is four compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SelCacheEntry {
    pub addr: [u32; 4],
    pub sel_epoch: u32,
    /// The profile, `PROFILE_NONE` when no prefix holds the address.
    pub profile: u32,
    /// Non-zero: one of the appliance's own addresses.
    pub local: u32,
    /// `ProfileSel::leg_by_generation` of the generation.
    pub leg: u32,
}

/// Slots of the per-CPU `PEER_CACHE` in front of the `PEERS` trie: the
/// peers of a scoped rule that send many packets (a partner's federation,
/// Microsoft 365's relays) are few, and each answer saves a trie walk.
pub const PEER_CACHE_SLOTS: u32 = 256;

/// A `PEER_CACHE` slot: a peer, the rule it asked about (`PeerAddr::scope`
/// as a word) and what `PEERS` answered while the generation with
/// `sel_epoch` was in force (the flip to a new one retires them all, as in
/// `SEL_CACHE`: `PEERS` changes only for the generation not in force).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerCacheEntry {
    pub addr: [u32; 4],
    pub scope: u32,
    pub sel_epoch: u32,
    /// Non-zero: the peer is in the rule's sets.
    pub admitted: u32,
    pub pad: u32,
}

/// Key of `FRAGMENTS`: one fragmented datagram (8-byte aligned, as `FlowKey`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Value of `FRAGMENTS`: the verdict of the first fragment, replayed for the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FragVerdict {
    /// `COUNTERS` index the first fragment was counted under.
    pub counter: u32,
    /// 1 = pass, 0 = drop.
    pub pass: u32,
}

/// Per-CPU packet and byte counts of one `COUNTERS` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a packet got its verdict when no catalog rule decided it.
/// The discriminant is the counter index offset; names are the metric labels.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    // Passes without a catalog rule.
    Established = 0,
    Arp = 1,
    NonIp = 2,
    Icmp = 3,
    NeighborDiscovery = 4,
    Dhcp = 5,
    Management = 6,
    Echo = 7,
    IpsecOnMediaPath = 8,
    // Drops.
    PortNotAllowed = 9,
    Malformed = 10,
    FragmentOrphan = 11,
    VlanDepth = 12,
    ExtHeaders = 13,
    ProtoNotAllowed = 14,
    IcmpType = 15,
    NoProfile = 16,
    /// A rule names the port, but the packet's remote side is not in the
    /// rule's address sets (`peers`), and nothing else passed it.
    PeerNotAllowed = 17,
    // Media rules' refusals (docs/packet-policy.md, "Media payload"). They
    // are counted per media rule (`media_counter_index`), not in the reason
    // entries, which stay zero for them.
    NotMedia = 18,
    Reflection = 19,
    RateLimited = 20,
}

pub const REASON_COUNT: u32 = 21;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Established,
        Reason::Arp,
        Reason::NonIp,
        Reason::Icmp,
        Reason::NeighborDiscovery,
        Reason::Dhcp,
        Reason::Management,
        Reason::Echo,
        Reason::IpsecOnMediaPath,
        Reason::PortNotAllowed,
        Reason::Malformed,
        Reason::FragmentOrphan,
        Reason::VlanDepth,
        Reason::ExtHeaders,
        Reason::ProtoNotAllowed,
        Reason::IcmpType,
        Reason::NoProfile,
        Reason::PeerNotAllowed,
        Reason::NotMedia,
        Reason::Reflection,
        Reason::RateLimited,
    ];

    /// The label used in metrics and stats.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Established => "established",
            Reason::Arp => "arp",
            Reason::NonIp => "non_ip",
            Reason::Icmp => "icmp",
            Reason::NeighborDiscovery => "neighbor_discovery",
            Reason::Dhcp => "dhcp",
            Reason::Management => "management",
            Reason::Echo => "echo",
            Reason::IpsecOnMediaPath => "ipsec_on_media_path",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::Malformed => "malformed",
            Reason::FragmentOrphan => "fragment_orphan",
            Reason::VlanDepth => "vlan_depth",
            Reason::ExtHeaders => "ext_headers",
            Reason::ProtoNotAllowed => "proto_not_allowed",
            Reason::IcmpType => "icmp_type",
            Reason::NoProfile => "no_profile",
            Reason::PeerNotAllowed => "peer_not_allowed",
            Reason::NotMedia => "not_media",
            Reason::Reflection => "reflection",
            Reason::RateLimited => "rate_limited",
        }
    }

    pub const fn from_index(i: u32) -> Option<Reason> {
        if i < REASON_COUNT {
            Some(Reason::ALL[i as usize])
        } else {
            None
        }
    }
}

/// The verdict a counter entry records.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    /// Monitor mode: the packet passed but enforce mode would have dropped it.
    WouldDrop = 2,
}

pub const VERDICT_COUNT: u32 = 3;

impl Verdict {
    /// The verdict of a counter's verdict field (`decode_reason_counter`).
    pub const fn from_index(i: u32) -> Option<Verdict> {
        match i {
            0 => Some(Verdict::Pass),
            1 => Some(Verdict::Drop),
            2 => Some(Verdict::WouldDrop),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::WouldDrop => "would_drop",
        }
    }
}

/// Protocol class of a reason counter (rule counters know their protocol).
pub const PCLASS_TCP: u32 = 0;
pub const PCLASS_UDP: u32 = 1;
pub const PCLASS_ICMP: u32 = 2;
pub const PCLASS_OTHER: u32 = 3;
pub const PCLASS_COUNT: u32 = 4;
pub const PCLASS_NAMES: [&str; PCLASS_COUNT as usize] = ["tcp", "udp", "icmp", "other"];

/// `COUNTERS` layout: `[0, MAX_RULE_SLOTS)` are rule slots (their passes),
/// then one entry per (reason, verdict, protocol class), the reasons
/// followed by three pseudo-reasons per media rule (its `not_media`,
/// `reflection` and `rate_limited` refusals, `media_reason`): the same
/// arithmetic decodes both, so the packet path's counting and events need
/// no case of their own for them.
pub const REASON_COUNTER_BASE: u32 = MAX_RULE_SLOTS;
/// Reasons and media pseudo-reasons.
pub const COUNTED_REASONS: u32 = REASON_COUNT + media::MAX_MEDIA_RULES * media::MEDIA_REFUSALS;
pub const COUNTER_ENTRIES: u32 =
    REASON_COUNTER_BASE + COUNTED_REASONS * VERDICT_COUNT * PCLASS_COUNT;

/// The pseudo-reason of media rule `index`'s refusals for `refusal`.
#[inline(always)]
pub const fn media_reason(index: u32, refusal: u32) -> u32 {
    REASON_COUNT + index * media::MEDIA_REFUSALS + refusal
}

/// A pseudo-reason as (media index, the reason it stands for).
pub const fn decode_media_reason(reason: u32) -> Option<(u32, Reason)> {
    if reason < REASON_COUNT || reason >= COUNTED_REASONS {
        return None;
    }
    let off = reason - REASON_COUNT;
    let r = match off % media::MEDIA_REFUSALS {
        0 => Reason::NotMedia,
        1 => Reason::Reflection,
        _ => Reason::RateLimited,
    };
    Some((off / media::MEDIA_REFUSALS, r))
}

/// A media refusal's counter as (media index, verdict, reason).
pub const fn decode_media_counter(index: u32) -> Option<(u32, Verdict, Reason)> {
    if index < REASON_COUNTER_BASE || index >= COUNTER_ENTRIES {
        return None;
    }
    let off = index - REASON_COUNTER_BASE;
    let rest = off / PCLASS_COUNT;
    let verdict = match rest % VERDICT_COUNT {
        0 => Verdict::Pass,
        1 => Verdict::Drop,
        _ => Verdict::WouldDrop,
    };
    match decode_media_reason(rest / VERDICT_COUNT) {
        Some((media, reason)) => Some((media, verdict, reason)),
        None => None,
    }
}
/// `COUNTERS` holds one set of `COUNTER_ENTRIES` per leg: leg l's entry for
/// counter c is at `l * COUNTER_ENTRIES + c`.
pub const COUNTER_MAP_ENTRIES: u32 = MAX_LEGS * COUNTER_ENTRIES;

#[inline(always)]
pub const fn reason_counter_index(reason: u32, verdict: u32, pclass: u32) -> u32 {
    REASON_COUNTER_BASE + (reason * VERDICT_COUNT + verdict) * PCLASS_COUNT + pclass
}

/// Inverse of [`reason_counter_index`] for userspace readers.
pub const fn decode_reason_counter(index: u32) -> Option<(Reason, u32, u32)> {
    if index < REASON_COUNTER_BASE || index >= COUNTER_ENTRIES {
        return None;
    }
    let off = index - REASON_COUNTER_BASE;
    let pclass = off % PCLASS_COUNT;
    let rest = off / PCLASS_COUNT;
    let verdict = rest % VERDICT_COUNT;
    match Reason::from_index(rest / VERDICT_COUNT) {
        Some(r) => Some((r, verdict, pclass)),
        None => None,
    }
}

/// Bytes of the frame an event carries.
pub const EVENT_SNAPLEN: usize = 128;
/// Size of the `EVENTS` ring buffer: 1 MiB holds about 6,200 events (160
/// bytes each plus the ring's 8-byte record header), several
/// seconds of the default budget on a small host even if the reader stalls.
pub const EVENT_RING_BYTES: u32 = 1 << 20;
/// The per-CPU budget's bucket holds one second of credit: a burst may use a
/// whole second's events at once, never more.
pub const EVENT_BURST_NS: u64 = 1_000_000_000;
const _: () = assert!(
    EVENT_BURST_NS <= u32::MAX as u64,
    "EventBudget::credit_ns is 32 bits"
);
/// Default events per second per CPU.
pub const EVENT_RATE_DEFAULT: u32 = 1_000;
/// `Event::reason` when a catalog rule decided (then `slot` names it).
pub const EVENT_REASON_RULE: u32 = u32::MAX;
/// `Event::reason` of a packet that went on (verdict pass) but whose flow
/// or fragment entry was refused; `slot` is the refusal's `FLOW_STATS`
/// index (`STAT_NEW_REFUSED`, `STAT_CONFIRMED_REFUSED`,
/// `STAT_FRAGMENT_REFUSED`).
pub const EVENT_REASON_FLOW_REFUSED: u32 = u32::MAX - 1;

/// The single entry of `EVENT_CONFIG`: what one event costs from a CPU's
/// budget (1e9 / rate, in nanoseconds of credit). 0 with `FLAG_EVENTS` clear.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EventConfig {
    pub cost_ns: u64,
}

/// One CPU's event budget (the `EVENT_BUDGET` per-CPU array's entry): a token
/// bucket counted in nanoseconds of credit, so the packet path never divides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EventBudget {
    /// At most `EVENT_BURST_NS`, which fits 32 bits (checked below).
    pub credit_ns: u32,
    /// The low 32 bits of jiffies when `last_ns` was read: while jiffies
    /// stands still, so does the coarse clock, and an empty budget stays
    /// empty without a clock read (see the XDP program's `take_credit`).
    pub last_jiffies: u32,
    /// The coarse monotonic clock when credit was last added.
    pub last_ns: u64,
    /// Events emitted by this CPU.
    pub emitted: u64,
    /// Events the budget (or a full ring) suppressed on this CPU.
    pub suppressed: u64,
}

/// One packet event in the `EVENTS` ring buffer. Fields in decreasing
/// alignment, no padding: userspace reads it as plain bytes. VLAN tags,
/// addresses and ports are read by userspace from `data` (see the XDP
/// program's `emit_event` for why the kernel does not parse them again).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC); userspace converts to wall clock.
    pub time_ns: u64,
    pub ifindex: u32,
    /// `Verdict` as u32.
    pub verdict: u32,
    /// `Reason` as u32, or `EVENT_REASON_RULE` when a rule decided.
    pub reason: u32,
    /// The rule slot when a rule decided, else 0.
    pub slot: u32,
    /// Length of the frame on the wire (what XDP saw).
    pub len: u32,
    /// Bytes of `data` that hold the frame (at most `EVENT_SNAPLEN`).
    pub captured: u32,
    pub data: [u8; EVENT_SNAPLEN],
}

/// Bounds on packet parsing; past them the packet is dropped with a reason.
pub const MAX_VLAN_TAGS: u32 = 2;
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;

/// Default sizes of the flow and fragment tables (the object's own; `run`
/// sets others with `--flows`, `--flows-unconfirmed`, `--fragments`).
/// `FLOWS` holds confirmed flows: 262,144 is an A/V Edge relaying 65,536
/// calls with two media streams each way.
pub const FLOW_ENTRIES: u32 = 262_144;
pub const FLOW_NEW_ENTRIES: u32 = 65_536;
pub const FRAGMENT_ENTRIES: u32 = 8_192;
/// The default per-source share (`Config::flow_share`): an eighth of the
/// default unconfirmed table per window, so that one source, or one
/// spoofed /64, can never take it.
pub const FLOW_SHARE_DEFAULT: u32 = FLOW_NEW_ENTRIES / 8;
/// The default share of the fragment table, likewise an eighth.
pub const FRAGMENT_SHARE_DEFAULT: u32 = FRAGMENT_ENTRIES / 8;
pub const LPM_ENTRIES: u32 = 1_024;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), padding-free Pod types (bytemuck checks it).
    unsafe impl aya::Pod for PortBlock {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for GenConfig {}
    unsafe impl aya::Pod for ProfileSel {}
    unsafe impl aya::Pod for MgmtPorts {}
    unsafe impl aya::Pod for LpmKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for ShareKey {}
    unsafe impl aya::Pod for Share {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragVerdict {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for EventConfig {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for RecentFlow {}
    unsafe impl aya::Pod for SelCacheEntry {}
    unsafe impl aya::Pod for media::StunBucket {}
    unsafe impl aya::Pod for media::MediaScratch {}
    unsafe impl aya::Pod for PeerAddr {}
    unsafe impl aya::Pod for PeerCacheEntry {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn reason_counter_index_round_trips() {
        for r in Reason::ALL {
            for v in 0..VERDICT_COUNT {
                for p in 0..PCLASS_COUNT {
                    let i = reason_counter_index(r as u32, v, p);
                    assert_eq!(decode_reason_counter(i), Some((r, v, p)), "index {i}");
                }
            }
        }
        assert_eq!(decode_reason_counter(REASON_COUNTER_BASE - 1), None);
        for index in [0, 7, media::MAX_MEDIA_RULES - 1] {
            for (r, reason) in [Reason::NotMedia, Reason::Reflection, Reason::RateLimited]
                .into_iter()
                .enumerate()
            {
                let pseudo = media_reason(index, r as u32);
                assert_eq!(
                    decode_reason_counter(reason_counter_index(pseudo, 1, PCLASS_UDP)),
                    None
                );
                for verdict in [Verdict::Drop, Verdict::WouldDrop] {
                    let c = reason_counter_index(pseudo, verdict as u32, PCLASS_UDP);
                    assert!(c < COUNTER_ENTRIES, "media rule {index} fits COUNTERS");
                    assert_eq!(
                        decode_media_counter(c),
                        Some((index, verdict, reason)),
                        "media rule {index}, {reason:?}, {verdict:?}"
                    );
                }
            }
        }
        assert_eq!(decode_media_counter(COUNTER_ENTRIES), None);
        assert_eq!(
            decode_media_counter(reason_counter_index(Reason::NoProfile as u32, 1, 1)),
            None
        );
    }

    #[test]
    fn port_blocks_do_not_overlap() {
        let last = port_block_index(
            MAX_PROFILES - 1,
            GENERATIONS - 1,
            DIRECTIONS - 1,
            PROTO_COUNT - 1,
            u16::MAX,
        );
        assert_eq!(last, PORT_BLOCK_ENTRIES - 1);
        assert_eq!(
            port_block_index(0, 0, DIR_INBOUND, PROTO_UDP, 0),
            BLOCKS_PER_PROTO
        );
        assert_eq!(
            port_block_index(0, 0, DIR_OUTBOUND, PROTO_TCP, 0),
            2 * BLOCKS_PER_PROTO
        );
        assert_eq!(
            port_block_index(0, 1, DIR_INBOUND, PROTO_TCP, 0),
            4 * BLOCKS_PER_PROTO
        );
    }

    #[test]
    fn the_fast_table_is_the_default_profiles_inbound_rows_and_names_its_generation() {
        for generation in 0..GENERATIONS {
            let base = fast_block_base(3, generation, false, false);
            assert_eq!(
                fast_block_index(base, PROTO_UDP, 50_000),
                port_block_index(3, generation, DIR_INBOUND, PROTO_UDP, 50_000),
                "UDP 50000 of profile 3, generation {generation}"
            );
            // What the packet path computes back from the base alone.
            assert_eq!(fast_block_generation(base), generation);
        }
        assert_ne!(
            fast_block_base(0, 0, false, false),
            0,
            "profile 0 has a table"
        );
        assert_eq!(fast_block_base(PROFILE_NONE, 0, false, false), 0);
        assert_eq!(
            fast_block_base(0, 1, true, false),
            0,
            "prefixes: no fast path"
        );
        assert_eq!(
            fast_block_base(0, 1, false, true),
            0,
            "appliance: no fast path"
        );
    }

    #[test]
    fn every_install_gets_a_sel_epoch_no_earlier_one_had() {
        let mut gens = [GenConfig::default(); GENERATIONS as usize];
        let mut seen = [0u32; 5];
        for (install, epoch) in seen.iter_mut().enumerate() {
            *epoch = next_sel_epoch(&gens);
            gens[install % 2].sel_epoch = *epoch;
        }
        assert_eq!(
            seen,
            [1, 2, 3, 4, 5],
            "epochs of five installs from a fresh CONFIG"
        );
        gens[0].sel_epoch = u32::MAX;
        assert_eq!(
            next_sel_epoch(&gens),
            1,
            "the wrap skips 0, which marks no install"
        );
    }

    #[test]
    fn the_essentials_are_the_documented_types_and_ports() {
        let types = |f: fn(u8) -> bool| (0..=255u8).filter(|t| f(*t)).collect::<Vec<_>>();
        assert_eq!(types(essentials::icmp4_error), [3, 11, 12]);
        assert_eq!(types(essentials::icmp6_error), [1, 2, 3, 4]);
        assert_eq!(
            types(essentials::icmp6_neighbor_discovery),
            [130, 131, 132, 133, 134, 135, 136, 143]
        );
        for (sport, dport) in essentials::DHCP_REPLIES {
            assert!(essentials::dhcp_reply(sport, dport), "{sport} -> {dport}");
            assert!(!essentials::dhcp_reply(dport, sport), "{dport} -> {sport}");
        }
        let ike: Vec<u16> = (0..=u16::MAX)
            .filter(|p| essentials::ike_port(*p))
            .collect();
        assert_eq!(ike, essentials::IKE_PORTS);
    }

    #[test]
    fn reason_discriminants_match_all() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
        }
    }

    #[test]
    fn map_values_have_expected_sizes() {
        assert_eq!(size_of::<PortBlock>(), 8);
        assert_eq!(size_of::<Config>(), 116);
        assert_eq!(size_of::<media::MediaScratch>(), 32);
        assert_eq!(size_of::<ProfileSel>(), 24);
        assert_eq!(size_of::<FlowState>(), 16);
        assert_eq!(size_of::<ShareKey>(), 16);
        assert_eq!(size_of::<Share>(), 8);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<LpmKey>(), 20);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<Event>(), 160);
        assert_eq!(size_of::<Event>() % 8, 0);
        assert_eq!(size_of::<EventBudget>(), 32);
        assert_eq!(size_of::<RecentFlow>(), 16);
        assert_eq!(size_of::<SelCacheEntry>(), 32);
        assert_eq!(
            align_of::<FlowKey>(),
            8,
            "the recent-flow hash reads it as five words"
        );
    }
}
