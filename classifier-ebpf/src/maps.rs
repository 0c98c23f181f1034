//! Every map of the programs: the policy (`CONFIG`, `PORT_BLOCKS`,
//! `PROFILES`, `MGMT`, `PEERS`), the counters, the flow and fragment state, the
//! per-CPU caches, and the packet events. The daemon pins all but the
//! per-CPU caches (`classifier_common::map_names`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use classifier_common::{
    Addr, COUNTER_MAP_ENTRIES, Config, Counter, EVENT_RING_BYTES, EventBudget, EventConfig,
    FLOW_ENTRIES, FLOW_NEW_ENTRIES, FLOW_PORT_ENTRIES, FLOW_PORTS_PER_ENTRY, FLOW_SHARE_ENTRIES,
    FLOW_STAT_ENTRIES, FRAGMENT_ENTRIES, FlowKey, FlowState, FragKey, FragVerdict, LPM_ENTRIES,
    MAX_RULE_SLOTS, MgmtPorts, PEER_CACHE_SLOTS, PEER_ENTRIES, PORT_BLOCK_ENTRIES, PeerAddr,
    PeerCacheEntry, PortBlock, ProfileSel, RECENT_FLOW_SLOTS, RecentFlow, SEL_CACHE_SLOTS,
    SelCacheEntry, Share, ShareKey,
    media::{MediaScratch, REFLECTION_ENTRIES_PER_GEN, STUN_BUDGET_ENTRIES, StunBucket},
};

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static PORT_BLOCKS: Array<PortBlock> = Array::with_max_entries(PORT_BLOCK_ENTRIES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(COUNTER_MAP_ENTRIES, 0);

#[map]
pub(crate) static PROFILES: LpmTrie<Addr, ProfileSel> = LpmTrie::with_max_entries(LPM_ENTRIES, 0);

#[map]
pub(crate) static MGMT: LpmTrie<Addr, MgmtPorts> = LpmTrie::with_max_entries(LPM_ENTRIES, 0);

/// The address sets of the rules that name one: (generation, rule slot,
/// prefix) → 1 (admitted) or 0 (carved out of a shorter admitted prefix).
/// Looked up only for a port whose slot has `SLOT_PEERS`.
#[map]
pub(crate) static PEERS: LpmTrie<PeerAddr, u32> = LpmTrie::with_max_entries(PEER_ENTRIES, 0);

/// Tests only (feature `trace`): the counter index of the last packet.
#[cfg(feature = "trace")]
#[map]
pub(crate) static TRACE: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static FRAGMENTS: LruHashMap<FragKey, FragVerdict> =
    LruHashMap::with_max_entries(FRAGMENT_ENTRIES, 0);

#[map]
pub(crate) static SEL_CACHE: PerCpuArray<SelCacheEntry> =
    PerCpuArray::with_max_entries(SEL_CACHE_SLOTS, 0);

/// `PEERS`' answers per CPU (see `classifier_common::PeerCacheEntry`).
#[map]
pub(crate) static PEER_CACHE: PerCpuArray<PeerCacheEntry> =
    PerCpuArray::with_max_entries(PEER_CACHE_SLOTS, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

#[map]
pub(crate) static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Confirmed flows: both sides have spoken. Never evicted.
#[map]
pub(crate) static FLOWS: HashMap<FlowKey, FlowState> = HashMap::with_max_entries(FLOW_ENTRIES, 0);
/// Unconfirmed flows: only the opener has spoken.
#[map]
pub(crate) static FLOWS_NEW: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOW_NEW_ENTRIES, 0);
/// Per-source shares of `FLOWS_NEW` and `FRAGMENTS`.
#[map]
pub(crate) static FLOW_SHARES: LruHashMap<ShareKey, Share> =
    LruHashMap::with_max_entries(FLOW_SHARE_ENTRIES, 0);
/// Inserts, confirmations and refusals, per CPU (`STAT_*`).
#[map]
pub(crate) static FLOW_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(FLOW_STAT_ENTRIES, 0);
/// One byte per local port: "some entry expects an answer to this port".
/// XDP looks the tables up only where it is set.
#[map]
pub(crate) static FLOW_PORTS: Array<[u8; FLOW_PORTS_PER_ENTRY as usize]> =
    Array::with_max_entries(FLOW_PORT_ENTRIES, 0);
/// Flows the recorder looked at lately, per CPU: most of a flow's packets
/// skip the lookup.
#[map]
pub(crate) static RECENT_FLOWS: PerCpuArray<RecentFlow> =
    PerCpuArray::with_max_entries(RECENT_FLOW_SLOTS, 0);
/// Confirmed flows XDP found lately, per CPU: most of their answers skip
/// the lookup.
#[map]
pub(crate) static RECENT_ANSWERS: PerCpuArray<RecentFlow> =
    PerCpuArray::with_max_entries(RECENT_FLOW_SLOTS, 0);
/// The catalog's amplification source ports, one bit a port, one bitmap
/// per generation (written with the port arrays, switched by the flip).
#[map]
pub(crate) static REFLECTION_PORTS: Array<u64> =
    Array::with_max_entries(2 * REFLECTION_ENTRIES_PER_GEN, 0);
/// STUN budgets of sources and subnets: an LRU of its own, so that a
/// spoofed flood evicts only other budgets, never a flow.
#[map]
pub(crate) static STUN_BUDGET: LruHashMap<ShareKey, StunBucket> =
    LruHashMap::with_max_entries(STUN_BUDGET_ENTRIES, 0);
/// Rule slot -> its media index + 1 (0: not a media rule), for the media
/// program's per-rule refusal counters.
#[map]
pub(crate) static MEDIA_INDEX: Array<u32> = Array::with_max_entries(MAX_RULE_SLOTS, 0);
/// The media program (index 0), tail-called by the XDP program.
#[map]
pub(crate) static MEDIA_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// What the XDP program hands the media program, per CPU.
#[map]
pub(crate) static MEDIA_SCRATCH: PerCpuArray<MediaScratch> = PerCpuArray::with_max_entries(1, 0);
