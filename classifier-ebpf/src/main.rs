//! portguard's packet path.
//!
//! `portguard` (XDP, ingress) parses each frame with a bounds check before
//! every read, decides a verdict, and leaves through a single exit point
//! that counts it. `portguard_egress` (TC, egress) records the flows that
//! leave each leg (the host's own connections, and what an appliance really
//! forwarded) so that XDP can let their answers in (`flows`).
#![no_std]
#![no_main]

mod flows;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use classifier_common::{
    Addr, COUNTER_ENTRIES, COUNTER_MAP_ENTRIES, Config, Counter, DIR_INBOUND, DIR_OUTBOUND,
    EVENT_BURST_NS, EVENT_REASON_RULE, EVENT_RING_BYTES, EVENT_SNAPLEN, Event, EventBudget,
    EventConfig, FLAG_APPLIANCE, FLAG_DROP_ECHO, FLAG_DROP_IPSEC_MEDIA, FLAG_EVENTS,
    FLAG_EVENTS_PASS, FLAG_MONITOR, FLAG_TRACE, FRAGMENT_ENTRIES, FlowKey, FragKey, FragVerdict,
    GenConfig, LPM_ENTRIES, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, MgmtPorts, PCLASS_COUNT,
    PCLASS_ICMP, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, PORT_BLOCK_ENTRIES, PROFILE_NONE, PROTO_TCP,
    PROTO_UDP, PortBlock, ProfileSel, REASON_COUNTER_BASE, Reason, SEL_CACHE_SLOTS, SHARE_FLOWS,
    SHARE_FRAGMENTS, STAT_FRAGMENT_INSERTS, STAT_FRAGMENT_REFUSED, SelCacheEntry, ShareKey,
    VERDICT_COUNT, Verdict, fast_block_generation, fast_block_index, port_block_index,
    reason_counter_index,
};
use flows::{TCP_ACK, TCP_SYN, local_port_has_flows};

/// The license the kernel reads from the object's `license` section. The
/// crate is `MIT OR Apache-2.0`, but the kernel knows only GPL-compatible
/// strings and denies GPL-only helpers (`bpf_perf_event_output`, for one) to
/// a program without one; "Dual MIT/GPL" offers MIT, as the crate does, and
/// is GPL-compatible for the verifier. classifier-user's `ebpf_object` tests
/// read it back from the embedded object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static PORT_BLOCKS: Array<PortBlock> = Array::with_max_entries(PORT_BLOCK_ENTRIES, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_MAP_ENTRIES, 0);
#[map]
static PROFILES: LpmTrie<Addr, ProfileSel> = LpmTrie::with_max_entries(LPM_ENTRIES, 0);
#[map]
static MGMT: LpmTrie<Addr, MgmtPorts> = LpmTrie::with_max_entries(LPM_ENTRIES, 0);
#[map]
static TRACE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragVerdict> =
    LruHashMap::with_max_entries(FRAGMENT_ENTRIES, 0);

#[map]
static SEL_CACHE: PerCpuArray<SelCacheEntry> = PerCpuArray::with_max_entries(SEL_CACHE_SLOTS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);
#[map]
static EVENT_CONFIG: Array<EventConfig> = Array::with_max_entries(1, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// What the packet path decided: the `COUNTERS` entry to bump and whether the
/// frame goes on.
#[derive(Clone, Copy)]
struct Outcome {
    counter: u32,
    pass: bool,
}

/// A read-only window on the frame. Every accessor checks bounds against
/// `data_end` itself, so no read can leave the packet whatever the offset.
struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn ptr<T>(&self, off: usize) -> Option<*const T> {
        let p = self.start + off;
        if p + size_of::<T>() > self.end {
            return None;
        }
        Some(p as *const T)
    }

    /// Copies `N` bytes at `off` out of the packet in one checked read. Reading
    /// a whole header through the pointer that was checked keeps the verifier
    /// able to prove the access, whatever LLVM does with the offsets.
    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `ptr` checked that all N bytes lie inside the packet.
        self.ptr::<[u8; N]>(off)
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }
}

/// The IP packet's end, hidden from LLVM: it knows `end <= data_end`, and
/// would otherwise use a check against `end` to delete the pointer bounds
/// check that follows, which the verifier needs to see.
#[inline(always)]
fn opaque(v: &usize) -> usize {
    // SAFETY: a plain read of a valid reference.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// An address as four words in memory order (IPv4 mapped into IPv6): read
/// from the packet with four loads, carried in four registers, and written
/// into a key only where a map needs one.
type Words = [u32; 4];

/// The `::ffff:0:0/96` prefix's third word, in memory order.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A word of the packet at `p + at`, in memory order.
#[inline(always)]
fn word_at(p: *const u8, at: usize) -> u32 {
    // SAFETY: the caller checked that `p .. p + at + 4` lies in the packet.
    unsafe { core::ptr::read_unaligned(p.add(at).cast::<u32>()) }
}

/// A big-endian u16 of the packet at `p + at`: one load, not two byte loads.
#[inline(always)]
fn be16_at(p: *const u8, at: usize) -> u16 {
    // SAFETY: the caller checked that `p .. p + at + 2` lies in the packet.
    u16::from_be(unsafe { core::ptr::read_unaligned(p.add(at).cast::<u16>()) })
}

/// The network layer summary the transport decision needs. The addresses
/// stay in the packet: only the lookups that need one (flows, profiles,
/// management, fragments) read it, so that the common packet, decided by
/// one port lookup, neither loads nor spills 32 bytes of addresses.
struct L3 {
    /// Offset of the source address; the destination follows it.
    addrs: usize,
    proto: u8,
    /// Offset of the transport header.
    l4: usize,
    /// End of the IP packet (total length / payload length): headers past it
    /// are padding, not the packet's.
    end: usize,
    /// The protocol a fragment is remembered under: the IPv4 protocol, or the
    /// IPv6 fragment header's next header (what a later fragment carries too).
    frag_proto: u8,
    /// Fragment identification, and whether this is a fragment at all.
    frag_id: u32,
    fragment: bool,
    /// A fragment other than the first: it carries no transport header.
    later_fragment: bool,
    v6: bool,
}

impl L3 {
    /// The map key form of the source address (IPv4 mapped into IPv6).
    #[inline(always)]
    fn src(&self, frame: &Frame) -> Addr {
        self.addr(frame, self.addrs)
    }

    #[inline(always)]
    fn dst(&self, frame: &Frame) -> Addr {
        self.addr(frame, self.addrs + if self.v6 { 16 } else { 4 })
    }

    /// The address at `off`, read again from the packet. The parser checked
    /// that both addresses lie inside it; the check here is for the verifier
    /// and cannot fail (the unspecified address would stand in if it did).
    #[inline(always)]
    fn addr(&self, frame: &Frame, off: usize) -> Addr {
        let words: Words = if self.v6 {
            match frame.ptr::<Words>(off) {
                // SAFETY: `ptr` checked the 16 bytes.
                Some(p) => unsafe { core::ptr::read_unaligned(p) },
                None => [0; 4],
            }
        } else {
            match frame.ptr::<u32>(off) {
                // SAFETY: `ptr` checked the 4 bytes.
                Some(p) => [0, 0, V4_MAPPED, unsafe { core::ptr::read_unaligned(p) }],
                None => [0; 4],
            }
        };
        // SAFETY: same size, and every bit pattern is a valid byte array.
        unsafe { core::mem::transmute::<Words, Addr>(words) }
    }
}

#[xdp]
pub fn portguard(ctx: XdpContext) -> u32 {
    match try_portguard(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

/// The single exit point: count the outcome and turn it into an action.
#[inline(always)]
fn try_portguard(ctx: &XdpContext) -> Result<u32, ()> {
    let config = CONFIG.get(0).ok_or(())?;
    if let Some(outcome) = fast_path(ctx, config) {
        return Ok(finish(ctx, config, outcome, 0));
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // Appliance mode keeps one set of counters per leg; a host has one leg.
    let leg = if config.flags & FLAG_APPLIANCE != 0 {
        leg_of(config, ctx.ingress_ifindex() as u32)
    } else {
        0
    };
    let outcome = classify_any(&frame, config, leg);
    Ok(finish(ctx, config, outcome, leg * COUNTER_ENTRIES))
}

/// Counts the outcome and turns it into an action. Everything that is off
/// in the common case (the trace, anomaly logging, events) is one test here
/// and a call to [`after_count`] when it is on: few values stay live across
/// the counter lookup, so the common packet spills nothing.
#[inline(always)]
fn finish(ctx: &XdpContext, config: &Config, outcome: Outcome, leg_base: u32) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let flags = config.flags;
    let mut packets = 0;
    if let Some(c) = COUNTERS.get_ptr_mut(leg_base + outcome.counter) {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        packets = unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            (*c).packets
        };
    }
    if flags & (FLAG_TRACE | FLAG_EVENTS) != 0 {
        core::hint::cold_path();
        // Events are on by default, and most packets pass: a pass that no
        // event is wanted for must not pay the call.
        if flags & FLAG_TRACE != 0
            || event_wanted(flags, outcome.counter)
            || anomaly_log_due(outcome.counter, packets)
        {
            after_count(ctx, flags, outcome.counter, packets);
        }
    } else if anomaly_log_due(outcome.counter, packets) {
        core::hint::cold_path();
        after_count(ctx, flags, outcome.counter, packets);
    }
    if outcome.pass {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Anomalies are logged when this CPU's count reaches a power of two: a
/// flood costs a logarithmic number of lines, never one per packet. (A
/// count of 0 means the counter could not be read.)
#[inline(always)]
fn anomaly_log_due(counter: u32, packets: u64) -> bool {
    counter >= ANOMALY_FIRST && packets & packets.wrapping_sub(1) == 0 && packets != 0
}

/// The trace (tests), the anomaly log and packet events: out of line, so
/// that the path with all three off carries none of their code.
#[inline(never)]
fn after_count(ctx: &XdpContext, flags: u32, counter: u32, packets: u64) {
    if flags & FLAG_TRACE != 0 {
        let _ = TRACE.set(0, counter, 0);
    }
    if anomaly_log_due(counter, packets) {
        log_anomaly(ctx, counter, packets);
    }
    if event_wanted(flags, counter) {
        emit_event(ctx, counter);
    }
}

/// Whether the packet counted under `counter` gets an event: events are on,
/// and it was dropped or would have been, or passes are wanted too
/// (`FLAG_EVENTS_PASS`). Rule slots count passes only; reason counters
/// carry their verdict.
#[inline(always)]
fn event_wanted(flags: u32, counter: u32) -> bool {
    flags & FLAG_EVENTS != 0
        && (flags & FLAG_EVENTS_PASS != 0
            || counter >= REASON_COUNTER_BASE && counter_verdict(counter) != Verdict::Pass as u32)
}

/// The leg a packet arrived on: its index in `Config::legs`, 0 if unknown.
#[inline(always)]
fn leg_of(config: &Config, ifindex: u32) -> u32 {
    let mut i = 0;
    while i < config.legs.len() {
        if config.legs[i] == ifindex {
            return i as u32;
        }
        i += 1;
    }
    0
}

/// Counter indexes from here on are the anomaly reasons (malformed and after,
/// in any verdict): see `Reason`'s order.
const ANOMALY_FIRST: u32 = reason_counter_index(Reason::Malformed as u32, 0, 0);

#[inline(never)]
fn log_anomaly(ctx: &XdpContext, counter: u32, packets: u64) {
    if let Some((reason, _, _)) = classifier_common::decode_reason_counter(counter) {
        warn!(
            ctx,
            "portguard: {} packets dropped as {} on this CPU",
            packets,
            reason.name()
        );
    }
}

/// Emits an event for a packet [`event_wanted`] says gets one, if this CPU's
/// budget has credit left; otherwise counts it as suppressed. In line in
/// [`after_count`], which is out of line: the verdict path carries nothing
/// extra for events.
///
/// The event holds the first 128 bytes of the frame, and userspace reads the
/// VLAN tags, addresses and ports from them: a second header parser here
/// would cost stack and instructions on every event for what userspace can
/// read from the copy.
#[inline(always)]
fn emit_event(ctx: &XdpContext, counter: u32) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    if !take_credit(budget) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        // The reader is behind and the ring is full: as good as suppressed.
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe { (*budget).suppressed += 1 };
        return;
    };
    // SAFETY: as above.
    unsafe { (*budget).emitted += 1 };
    let e = entry.as_mut_ptr();
    let len = ctx.data_end() - ctx.data();
    // SAFETY: `e` points at a reserved, writable `Event`; every field is
    // written before submit (`data` up to `captured`).
    unsafe {
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).ifindex = ctx.ingress_ifindex() as u32;
        if counter < REASON_COUNTER_BASE {
            (*e).verdict = Verdict::Pass as u32;
            (*e).reason = EVENT_REASON_RULE;
            (*e).slot = counter;
        } else {
            (*e).verdict = counter_verdict(counter);
            (*e).reason = (counter - REASON_COUNTER_BASE) / (PCLASS_COUNT * VERDICT_COUNT);
            (*e).slot = 0;
        }
        (*e).len = len as u32;
        (*e).captured = 0;
        // Two calls with lengths the verifier can bound (128, or 1..=127)
        // rather than one whose length it would have to prove.
        let dst = (&raw mut (*e).data).cast::<core::ffi::c_void>();
        if len >= EVENT_SNAPLEN {
            if bpf_xdp_load_bytes(ctx.ctx, 0, dst, EVENT_SNAPLEN as u32) == 0 {
                (*e).captured = EVENT_SNAPLEN as u32;
            }
        } else if len > 0 {
            // 1..=128 by construction (the verifier follows the arithmetic,
            // where LLVM may drop a comparison), and `len` itself here.
            let cap = (((len as u32) - 1) & (EVENT_SNAPLEN as u32 - 1)) + 1;
            if bpf_xdp_load_bytes(ctx.ctx, 0, dst, cap) == 0 {
                (*e).captured = cap;
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn counter_verdict(counter: u32) -> u32 {
    ((counter - REASON_COUNTER_BASE) / PCLASS_COUNT) % VERDICT_COUNT
}

/// The per-CPU token bucket: credit grows with time up to one second's
/// worth, an event costs `EVENT_CONFIG.cost_ns`. False (and counted as
/// suppressed) when the event does not fit the budget.
#[inline(always)]
fn take_credit(budget: *mut EventBudget) -> bool {
    let cost = match EVENT_CONFIG.get(0) {
        Some(c) => c.cost_ns,
        None => 0,
    };
    // SAFETY: helpers without arguments; `budget` is this CPU's own value.
    unsafe {
        // Under a flood nearly every event is suppressed, and the clock read
        // was a third of what a suppressed event cost (a helper call, 5 ns
        // measured); jiffies is one load (the verifier inlines it). The
        // coarse clock moves only at a tick, which moves jiffies too: while
        // jiffies stands still no credit has come in, and an empty budget
        // stays empty. (If the two are read across a tick's update, credit
        // comes in a tick later; none is lost, since `last_ns` is kept.)
        let tick = bpf_jiffies64() as u32;
        if tick == (*budget).last_jiffies && u64::from((*budget).credit_ns) < cost {
            (*budget).suppressed += 1;
            return false;
        }
        (*budget).last_jiffies = tick;
        // The coarse clock (a load of the last tick's time, no TSC read) is
        // plenty for a per-second budget. The event's own time stamp uses
        // the precise clock.
        let now = bpf_ktime_get_coarse_ns();
        let mut credit = u64::from((*budget).credit_ns) + now.wrapping_sub((*budget).last_ns);
        if credit > EVENT_BURST_NS {
            credit = EVENT_BURST_NS;
        }
        (*budget).last_ns = now;
        if cost == 0 || credit < cost {
            // At most EVENT_BURST_NS, which fits (checked in classifier-common).
            (*budget).credit_ns = credit as u32;
            (*budget).suppressed += 1;
            return false;
        }
        (*budget).credit_ns = (credit - cost) as u32;
    }
    true
}

#[inline(always)]
fn pass(reason: Reason, pclass: u32) -> Outcome {
    Outcome {
        counter: reason_counter_index(reason as u32, Verdict::Pass as u32, pclass),
        pass: true,
    }
}

/// A drop, or in monitor mode a pass counted as `would_drop`.
#[inline(always)]
fn deny(reason: Reason, pclass: u32, config: &Config) -> Outcome {
    if config.flags & FLAG_MONITOR != 0 {
        Outcome {
            counter: reason_counter_index(reason as u32, Verdict::WouldDrop as u32, pclass),
            pass: true,
        }
    } else {
        Outcome {
            counter: reason_counter_index(reason as u32, Verdict::Drop as u32, pclass),
            pass: false,
        }
    }
}

/// The common packet on a host: an unfragmented TCP or UDP packet, IPv4
/// without options or IPv6 without extension headers, under at most
/// `MAX_VLAN_TAGS` tags, when the generation in force has a fast table
/// (`Config::fast_block_base`: a default profile, no `--profile` prefixes,
/// not an appliance). It is decided here with one port lookup and
/// few live values; anything else (`None`) goes to `classify_any`, which
/// parses the frame again from the start and decides every case. Each
/// verdict here is the one `classify_any` would give: the same checks in the
/// same order, minus the branches the conditions above rule out; where a
/// decision needs an address (flows, management), it leaves the packet to
/// `classify_any`.
#[inline(always)]
fn fast_path(ctx: &XdpContext, config: &Config) -> Option<Outcome> {
    let base = config.fast_block_base;
    if base == 0 {
        return not_fast();
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(eth) = frame.ptr::<[u8; ETH_HLEN]>(0) else {
        return not_fast();
    };
    let mut ethertype = be16_at(eth.cast::<u8>(), 12);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = frame.ptr::<[u8; 4]>(off) else {
            return not_fast();
        };
        ethertype = be16_at(tag.cast::<u8>(), 2);
        off += 4;
    }
    // One bounds check per family covers the IP header and the ports that
    // follow it (there are no options or extension headers in between).
    let (proto, l4, end, ports) = if ethertype == ETH_P_IP {
        let Some(h) = frame.ptr::<[u8; 20 + 4]>(off) else {
            return not_fast();
        };
        let h = h.cast::<u8>();
        // SAFETY (both): inside the checked 20 bytes.
        let (version_ihl, proto) = unsafe { (*h, *h.add(9)) };
        let total = be16_at(h, 2) as usize;
        // No options, no fragment (neither MF nor an offset). (A total
        // under 20 needs no test of its own: it puts the end before the
        // transport header, which the check below refuses.)
        if version_ihl != 0x45 || be16_at(h, 6) & 0x3fff != 0 || off + total > frame.len() {
            return not_fast();
        }
        // SAFETY: inside the checked 24 bytes.
        (proto, off + 20, off + total, unsafe { h.add(20) })
    } else if ethertype == ETH_P_IPV6 {
        let Some(h) = frame.ptr::<[u8; 40 + 4]>(off) else {
            return not_fast();
        };
        let h = h.cast::<u8>();
        // SAFETY (both): inside the checked 40 bytes.
        let (version, proto) = unsafe { (*h >> 4, *h.add(6)) };
        let payload = be16_at(h, 4) as usize;
        if version != 6 || off + 40 + payload > frame.len() {
            return not_fast();
        }
        // SAFETY: inside the checked 44 bytes.
        (proto, off + 40, off + 40 + payload, unsafe { h.add(40) })
    } else {
        return not_fast();
    };
    let (proto, pclass, hlen) = match proto {
        IPPROTO_UDP => (PROTO_UDP, PCLASS_UDP, UDP_HLEN),
        IPPROTO_TCP => (PROTO_TCP, PCLASS_TCP, TCP_HLEN),
        _ => return not_fast(),
    };
    if l4 + hlen > end {
        return not_fast();
    }
    let (sport, dport) = (be16_at(ports, 0), be16_at(ports, 2));
    if proto == PROTO_UDP && ((sport == 67 && dport == 68) || (sport == 547 && dport == 546)) {
        core::hint::cold_path();
        return Some(pass(Reason::Dhcp, pclass));
    }
    let slot = port_slot(fast_block_index(base, proto, dport), dport);
    if slot != 0 {
        return Some(Outcome {
            counter: slot as u32,
            pass: true,
        });
    }
    // Not allowed by a rule: the management guard and the flow table need
    // the addresses, so a packet that may meet them is decided by the full
    // path. (A flow is possible only where `FLOW_PORTS` marks the port.)
    if (proto == PROTO_TCP && is_mgmt_port(config, dport)) || local_port_has_flows(dport) {
        return not_fast();
    }
    if proto == PROTO_UDP && (dport == 500 || dport == 4500) {
        core::hint::cold_path();
        // The generation the table belongs to, not `config.generation`.
        let gen_config = &config.gens[fast_block_generation(base) as usize];
        if is_media_profile_in(gen_config, gen_config.default_profile) {
            return Some(ipsec(config, pclass));
        }
    }
    Some(deny(Reason::PortNotAllowed, pclass, config))
}

/// The fast path's "not mine": marked cold, so that LLVM lays the common
/// packet's path out as straight-line code and these exits out of its way.
#[inline(always)]
fn not_fast() -> Option<Outcome> {
    core::hint::cold_path();
    None
}

/// Every frame: the parser and decision for all shapes and modes. `leg` is
/// the leg the frame arrived on (always 0 on a host).
#[inline(always)]
fn classify_any(frame: &Frame, config: &Config, leg: u32) -> Outcome {
    let Some(eth_type) = frame.bytes::<2>(12) else {
        return deny(Reason::Malformed, PCLASS_OTHER, config);
    };
    let mut ethertype = be16(&eth_type, 0);
    let mut off = ETH_HLEN;
    // One iteration per tag allowed, plus one to see a tag too many.
    for _ in 0..=MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        if off >= ETH_HLEN + 4 * MAX_VLAN_TAGS as usize {
            return deny(Reason::VlanDepth, PCLASS_OTHER, config);
        }
        let Some(tag) = frame.bytes::<4>(off) else {
            return deny(Reason::Malformed, PCLASS_OTHER, config);
        };
        ethertype = be16(&tag, 2);
        off += 4;
    }
    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4(frame, off),
        ETH_P_IPV6 => parse_ipv6(frame, off),
        ETH_P_ARP => return pass(Reason::Arp, PCLASS_OTHER),
        _ => return pass(Reason::NonIp, PCLASS_OTHER),
    };
    let l3 = match l3 {
        Ok(l3) => l3,
        Err(reason) => return deny(reason, PCLASS_OTHER, config),
    };

    if l3.later_fragment {
        return replay_fragment(frame, &l3, config);
    }
    let outcome = classify_l4(frame, &l3, config, leg);
    if l3.fragment && outcome.pass {
        remember_fragment(frame, &l3, config, outcome);
    }
    outcome
}

/// A first fragment that passed: the rest of its datagram follows its
/// verdict. A dropped one takes no entry (its later fragments are orphans,
/// dropped too), and a source may have only `Config::fragment_share` first
/// fragments remembered per window, so that neither a flood of forbidden
/// fragments nor one source's allowed ones can push out a legitimate
/// datagram's entry.
#[inline(never)]
fn remember_fragment(frame: &Frame, l3: &L3, config: &Config, outcome: Outcome) {
    let key = frag_key(frame, l3);
    if !flows::take_share(&share_key(&key.src, SHARE_FRAGMENTS), config.fragment_share) {
        flows::count(STAT_FRAGMENT_REFUSED);
        return;
    }
    let verdict = FragVerdict {
        counter: outcome.counter,
        pass: outcome.pass as u32,
    };
    if FRAGMENTS.insert(key, verdict, 0).is_ok() {
        flows::count(STAT_FRAGMENT_INSERTS);
    }
}

/// The share of `addr`'s prefix (an IPv4 address, an IPv6 /64) in `kind`.
#[inline(always)]
fn share_key(addr: &Addr, kind: u32) -> ShareKey {
    // SAFETY: same size, and every bit pattern is a valid set of words.
    let w = unsafe { core::mem::transmute::<Addr, Words>(*addr) };
    let prefix = if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED {
        [w[2], w[3]]
    } else {
        [w[0], w[1]]
    };
    ShareKey {
        prefix,
        kind,
        pad: 0,
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, off: usize) -> Result<L3, Reason> {
    let hp = frame
        .ptr::<[u8; 20]>(off)
        .ok_or(Reason::Malformed)?
        .cast::<u8>();
    // SAFETY: `ptr` checked the 20 bytes of the fixed header.
    let version_ihl = unsafe { *hp };
    let ihl = (version_ihl & 0x0f) as usize * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::Malformed);
    }
    // Bounds of the whole header, options included.
    frame.ptr::<u8>(off + ihl - 1).ok_or(Reason::Malformed)?;
    let total = be16_at(hp, 2) as usize;
    if total < ihl || off + total > frame.len() {
        return Err(Reason::Malformed);
    }
    let frag = be16_at(hp, 6);
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    // SAFETY: inside the checked 20 bytes.
    let proto = unsafe { *hp.add(9) };
    Ok(L3 {
        addrs: off + 12,
        proto,
        l4: off + ihl,
        end: off + total,
        frag_proto: proto,
        frag_id: be16_at(hp, 4) as u32,
        fragment: more || offset != 0,
        later_fragment: offset != 0,
        v6: false,
    })
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, off: usize) -> Result<L3, Reason> {
    // The fixed header, addresses included, lies in the packet.
    frame.ptr::<[u8; 40]>(off).ok_or(Reason::Malformed)?;
    let h = frame.bytes::<8>(off).ok_or(Reason::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload = be16(&h, 4) as usize;
    if off + 40 + payload > frame.len() {
        return Err(Reason::Malformed);
    }
    let mut l3 = L3 {
        addrs: off + 8,
        proto: h[6],
        l4: off + 40,
        end: off + 40 + payload,
        frag_proto: 0,
        frag_id: 0,
        fragment: false,
        later_fragment: false,
        v6: true,
    };
    // Walk extension headers up to the bound; one more iteration sees whether
    // the chain goes on past it.
    for i in 0..=MAX_IPV6_EXT_HEADERS {
        let is_ext = matches!(
            l3.proto,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
        );
        if !is_ext {
            // A chain whose last header runs past the payload is malformed.
            if l3.l4 > opaque(&l3.end) {
                return Err(Reason::Malformed);
            }
            return Ok(l3);
        }
        if i == MAX_IPV6_EXT_HEADERS {
            break;
        }
        // Every extension header is at least 8 bytes long, inside the packet.
        if l3.l4 + 8 > opaque(&l3.end) {
            return Err(Reason::Malformed);
        }
        let e = frame.bytes::<8>(l3.l4).ok_or(Reason::Malformed)?;
        if l3.proto == IPPROTO_FRAGMENT {
            l3.frag_proto = e[0];
            l3.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
            l3.fragment = true;
            l3.later_fragment = be16(&e, 2) >> 3 != 0;
            l3.l4 += 8;
        } else {
            l3.l4 += (e[1] as usize + 1) * 8;
        }
        l3.proto = e[0];
        if l3.later_fragment {
            // Headers after the fragment header belong to the fragmentable
            // part; only the first fragment carries them.
            return Ok(l3);
        }
    }
    Err(Reason::ExtHeaders)
}

#[inline(always)]
fn frag_key(frame: &Frame, l3: &L3) -> FragKey {
    FragKey {
        src: l3.src(frame),
        dst: l3.dst(frame),
        id: l3.frag_id,
        proto: l3.frag_proto,
        pad: [0; 3],
    }
}

#[inline(always)]
fn replay_fragment(frame: &Frame, l3: &L3, config: &Config) -> Outcome {
    // SAFETY: the value is copied out at once; an LRU entry may be evicted
    // concurrently but its memory stays valid for this RCU section.
    match unsafe { FRAGMENTS.get(frag_key(frame, l3)) } {
        Some(v) => Outcome {
            counter: v.counter,
            pass: v.pass != 0,
        },
        None => deny(Reason::FragmentOrphan, pclass_of(l3.proto), config),
    }
}

#[inline(always)]
fn pclass_of(proto: u8) -> u32 {
    match proto {
        IPPROTO_TCP => PCLASS_TCP,
        IPPROTO_UDP => PCLASS_UDP,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => PCLASS_ICMP,
        _ => PCLASS_OTHER,
    }
}

#[inline(always)]
fn classify_l4(frame: &Frame, l3: &L3, config: &Config, leg: u32) -> Outcome {
    // The transport header must lie inside the IP packet, not in padding
    // after it.
    let hlen = match l3.proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_ICMP if !l3.v6 => 4,
        IPPROTO_ICMPV6 if l3.v6 => 4,
        _ => 0,
    };
    if l3.l4 + hlen > opaque(&l3.end) {
        return deny(Reason::Malformed, pclass_of(l3.proto), config);
    }
    match l3.proto {
        IPPROTO_TCP => match frame.ptr::<[u8; TCP_HLEN]>(l3.l4) {
            Some(h) => {
                let h = h.cast::<u8>();
                // SAFETY: inside the checked header.
                let flags = unsafe { *h.add(13) };
                decide_ports(
                    frame,
                    l3,
                    config,
                    leg,
                    PROTO_TCP,
                    PCLASS_TCP,
                    be16_at(h, 0),
                    be16_at(h, 2),
                    flags,
                )
            }
            None => deny(Reason::Malformed, PCLASS_TCP, config),
        },
        IPPROTO_UDP => match frame.ptr::<[u8; UDP_HLEN]>(l3.l4) {
            Some(h) => {
                let h = h.cast::<u8>();
                decide_ports(
                    frame,
                    l3,
                    config,
                    leg,
                    PROTO_UDP,
                    PCLASS_UDP,
                    be16_at(h, 0),
                    be16_at(h, 2),
                    0,
                )
            }
            None => deny(Reason::Malformed, PCLASS_UDP, config),
        },
        IPPROTO_ICMP if !l3.v6 => classify_icmp(frame, l3, config),
        IPPROTO_ICMPV6 if l3.v6 => classify_icmp(frame, l3, config),
        IPPROTO_ESP | IPPROTO_AH if to_media_host(frame, l3, config) => ipsec(config, PCLASS_OTHER),
        _ => deny(Reason::ProtoNotAllowed, PCLASS_OTHER, config),
    }
}

#[inline(always)]
fn ipsec(config: &Config, pclass: u32) -> Outcome {
    if config.flags & FLAG_DROP_IPSEC_MEDIA != 0 {
        deny(Reason::IpsecOnMediaPath, pclass, config)
    } else {
        pass(Reason::IpsecOnMediaPath, pclass)
    }
}

#[inline(always)]
fn classify_icmp(frame: &Frame, l3: &L3, config: &Config) -> Outcome {
    // Type, code and checksum: every ICMP message has at least these. (A
    // one-byte read would also let LLVM turn the check into `end > p`, which
    // the verifier cannot use.)
    let Some([icmp_type, _, _, _]) = frame.bytes::<4>(l3.l4) else {
        return deny(Reason::Malformed, PCLASS_ICMP, config);
    };
    let (reason, echo_request) = if l3.v6 {
        match icmp_type {
            // Destination unreachable, packet too big, time exceeded, parameter problem.
            1..=4 => (Reason::Icmp, false),
            128 => (Reason::Echo, true),
            129 => (Reason::Echo, false),
            // MLD query/report/done, router and neighbour solicitation and
            // advertisement, MLDv2 report. Redirect (137) is left out on purpose.
            130..=136 | 143 => (Reason::NeighborDiscovery, false),
            _ => return deny(Reason::IcmpType, PCLASS_ICMP, config),
        }
    } else {
        match icmp_type {
            // Destination unreachable (incl. fragmentation needed), time exceeded, parameter problem.
            3 | 11 | 12 => (Reason::Icmp, false),
            8 => (Reason::Echo, true),
            0 => (Reason::Echo, false),
            _ => return deny(Reason::IcmpType, PCLASS_ICMP, config),
        }
    };
    if echo_request && config.flags & FLAG_DROP_ECHO != 0 {
        return deny(Reason::Echo, PCLASS_ICMP, config);
    }
    pass(reason, PCLASS_ICMP)
}

/// An address's entry in `PROFILES` for the active generation: its profile
/// (`PROFILE_NONE` when no prefix holds it) and whether it is one of the
/// appliance's own addresses.
#[derive(Clone, Copy)]
struct Sel {
    profile: u32,
    local: bool,
    /// The leg the address sits behind, + 1 (0: behind no leg).
    leg: u32,
}

/// `PROFILES`' answer for `addr` in the generation in force (`generation`,
/// whose `GenConfig::sel_epoch` is `epoch`), through this CPU's `SEL_CACHE`:
/// destinations in its first half, sources in its second, so that sources
/// from many addresses (a flood, the internet's clients) cannot push the
/// few destinations out.
///
/// The trie walk was the largest cost of a forwarded packet (about 13 ns of
/// 32 above the empty program); the addresses an appliance forwards to are
/// few, so nearly every lookup is a cache hit: a hash, a slot and four
/// compares. The answer cannot go stale: it is stored under the epoch of the
/// generation it was read in, the trie answers every address the same while
/// that generation is in force (the loader rewrites only the other one), and
/// the flip brings a new epoch. A miss (a new address, a reload, an address
/// in a colliding slot) walks the trie and fills the slot.
#[inline(always)]
fn lookup_sel(addr: &Addr, generation: usize, epoch: u32, half: CacheHalf) -> Sel {
    // SAFETY: same size, and every bit pattern is a valid set of words.
    // (Words of four bytes: the address is also the trie key's, at offset 4,
    // where the verifier refuses an 8-byte stack store.)
    let words = unsafe { core::mem::transmute::<Addr, Words>(*addr) };
    // IPv4 is the last word (mapped): it goes to the high half, where the
    // multiply spreads it into the top bits the slot is taken from.
    let folded = u64::from(words[0] ^ words[2]) | u64::from(words[1] ^ words[3]) << 32;
    let hash = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let slot = SEL_CACHE.get_ptr_mut((hash >> 57) as u32 & (SEL_CACHE_SLOTS / 2 - 1) | half as u32);
    if let Some(e) = slot {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe {
            if epoch != 0 && (*e).sel_epoch == epoch && (*e).addr == words {
                return Sel {
                    profile: (*e).profile,
                    local: (*e).local != 0,
                    leg: (*e).leg,
                };
            }
        }
    }
    core::hint::cold_path();
    // The trie key's address sits at offset 4 (after the prefix length): in
    // a key of its own LLVM may store it with 8-byte words there, which the
    // verifier refuses on the stack. Four bytes in front align it.
    let key = AlignedLpmKey {
        _align: 0,
        key: Key::new(128, *addr),
    };
    let sel = match PROFILES.get(&key.key) {
        Some(sel) => Sel {
            profile: sel.by_generation[generation],
            local: sel.local_by_generation[generation] != 0,
            leg: sel.leg_by_generation[generation],
        },
        None => Sel {
            profile: PROFILE_NONE,
            local: false,
            leg: 0,
        },
    };
    if let Some(e) = slot {
        // SAFETY: as above.
        unsafe {
            *e = SelCacheEntry {
                addr: words,
                sel_epoch: epoch,
                profile: sel.profile,
                local: u32::from(sel.local),
                leg: sel.leg,
            };
        }
    }
    sel
}

/// An LPM trie key whose address is 8-byte aligned on the stack.
#[repr(C, align(8))]
struct AlignedLpmKey {
    _align: u32,
    key: Key<Addr>,
}

/// Which half of `SEL_CACHE` an address is cached in (the slot's top bit).
#[derive(Clone, Copy)]
enum CacheHalf {
    Destination = 0,
    Source = SEL_CACHE_SLOTS as isize / 2,
}

/// The destination's profile in the active generation.
#[inline(always)]
fn dst_sel(frame: &Frame, l3: &L3, config: &Config) -> Sel {
    let generation = (config.generation & 1) as usize;
    let default = config.gens[generation].default_profile;
    if config.gens[generation].has_prefixes == 0 {
        return Sel {
            profile: default,
            local: false,
            leg: 0,
        };
    }
    let epoch = config.gens[generation].sel_epoch;
    let mut sel = lookup_sel(&l3.dst(frame), generation, epoch, CacheHalf::Destination);
    if sel.profile == PROFILE_NONE {
        sel.profile = default;
    }
    sel
}

#[inline(always)]
fn to_media_host(frame: &Frame, l3: &L3, config: &Config) -> bool {
    is_media_profile(dst_sel(frame, l3, config).profile, config)
}

#[inline(always)]
fn is_media_profile(profile: u32, config: &Config) -> bool {
    is_media_profile_in(&config.gens[(config.generation & 1) as usize], profile)
}

/// Whether `profile` runs a media role in one generation's settings.
#[inline(always)]
fn is_media_profile_in(gen_config: &GenConfig, profile: u32) -> bool {
    profile < 32 && gen_config.media_profiles & (1 << profile) != 0
}

/// The rule slot `profile`'s `direction` rows give (proto, port), 0 if none.
#[inline(always)]
fn rule_slot(profile: u32, config: &Config, direction: u32, proto: u32, port: u16) -> u16 {
    let generation = config.generation & 1;
    port_slot(
        port_block_index(profile, generation, direction, proto, port),
        port,
    )
}

/// The rule slot of `port` in the `PORT_BLOCKS` entry `index` (0: no rule).
#[inline(always)]
fn port_slot(index: u32, port: u16) -> u16 {
    match PORT_BLOCKS.get_ptr(index) {
        Some(block) => {
            // Four u16 slots read as one word: no indexing, so no bounds branch.
            // SAFETY: `get_ptr` returned a valid pointer to an 8-byte value.
            let word = unsafe { core::ptr::read_unaligned(block as *const u64) };
            (word >> ((port as u64 & 3) * 16)) as u16
        }
        None => 0,
    }
}

/// The port decision. Inline: the parser's frame no longer holds the
/// addresses, and the keys built here fit the same frame; a call to an
/// out-of-line function cost a spill of the parser's state per packet.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined: the arguments are registers"
)]
fn decide_ports(
    frame: &Frame,
    l3: &L3,
    config: &Config,
    leg: u32,
    proto: u32,
    pclass: u32,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Outcome {
    if proto == PROTO_UDP && ((sport == 67 && dport == 68) || (sport == 547 && dport == 546)) {
        return pass(Reason::Dhcp, pclass);
    }
    let appliance = config.flags & FLAG_APPLIANCE != 0;

    let dst = dst_sel(frame, l3, config);
    if dst.profile != PROFILE_NONE {
        let slot = rule_slot(dst.profile, config, DIR_INBOUND, proto, dport);
        if slot != 0 {
            return Outcome {
                counter: slot as u32,
                pass: true,
            };
        }
    }
    // Appliance mode: a packet from a profile's address meets that profile's
    // outbound rows, if it arrived on the leg that address sits behind (a
    // strict reverse-path check: a frame on the internet leg that claims an
    // Edge Server's source is not the Edge's). Only profiles with such rows
    // pay for the lookup.
    let mut src_profile = PROFILE_NONE;
    if appliance {
        let generation = (config.generation & 1) as usize;
        let outbound = config.gens[generation].outbound_profiles;
        if outbound != 0 {
            let epoch = config.gens[generation].sel_epoch;
            let src = lookup_sel(&l3.src(frame), generation, epoch, CacheHalf::Source);
            src_profile = src.profile;
            if src_profile < 32 && outbound & (1 << src_profile) != 0 && src.leg == leg + 1 {
                let slot = rule_slot(src_profile, config, DIR_OUTBOUND, proto, dport);
                if slot != 0 {
                    return Outcome {
                        counter: slot as u32,
                        pass: true,
                    };
                }
            }
        }
    }

    // The lockout guard: no catalog can take it away. Checked after the
    // catalog only so that allowed traffic does not pay for it; a port the
    // catalog allows is counted under its rule. An appliance keeps itself
    // reachable, never a server behind it.
    if proto == PROTO_TCP
        && is_mgmt_port(config, dport)
        && (!appliance || dst.local)
        && let Some(m) = MGMT.get(Key::new(128, l3.src(frame)))
    {
        let mut i = 0;
        while i < m.ports.len() {
            if m.ports[i] == dport {
                return pass(Reason::Management, pclass);
            }
            i += 1;
        }
    }

    // An answer to a flow that left by this leg. A pure SYN opens a
    // connection: it is never an answer.
    let syn_only = proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn_only && local_port_has_flows(dport) {
        let flow = FlowKey {
            remote: l3.src(frame),
            local: l3.dst(frame),
            remote_port: sport,
            local_port: dport,
            proto: l3.proto,
            leg: leg as u8,
            pad: [0; 2],
        };
        if flows::is_answer(&flow, flags) {
            return pass(Reason::Established, pclass);
        }
    }
    if dst.profile == PROFILE_NONE && src_profile == PROFILE_NONE {
        return deny(Reason::NoProfile, pclass, config);
    }
    if proto == PROTO_UDP
        && (dport == 500 || dport == 4500)
        && is_media_profile(dst.profile, config)
    {
        return ipsec(config, pclass);
    }
    deny(Reason::PortNotAllowed, pclass, config)
}

#[inline(always)]
fn is_mgmt_port(config: &Config, port: u16) -> bool {
    let mut i = 0;
    while i < config.mgmt_ports.len() {
        if config.mgmt_ports[i] == port && port != 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// Records the flows that leave this leg, so that XDP lets their answers in
/// (see `flows`).
#[classifier]
pub fn portguard_egress(ctx: TcContext) -> i32 {
    record_flow(&ctx);
    TC_ACT_OK
}

/// Reads the headers straight from the packet, as XDP does: the addresses
/// as words, so the key is built from registers. A packet whose headers
/// are not in the linear part of the buffer is not recorded.
///
/// Every TCP segment (not only the SYN) and every UDP datagram is
/// recorded, so that a flow table lost to a restart or a failover fills
/// again from the traffic. What is not recorded: a packet whose answer a
/// catalog rule lets in anyway (a server answering from its listening port:
/// most of a host's segments), and a later fragment (no ports).
#[inline(always)]
fn record_flow(ctx: &TcContext) {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(eth_type) = frame.bytes::<2>(12) else {
        return;
    };
    let mut ethertype = be16(&eth_type, 0);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = frame.bytes::<4>(off) else {
            return;
        };
        ethertype = be16(&tag, 2);
        off += 4;
    }
    let (hp, v6, proto, l4) = match ethertype {
        ETH_P_IP => {
            let Some(hp) = frame.ptr::<[u8; 20]>(off) else {
                return;
            };
            let hp = hp.cast::<u8>();
            if be16_at(hp, 6) & 0x1fff != 0 {
                return;
            }
            // SAFETY (both): inside the checked 20 bytes.
            let (version_ihl, proto) = unsafe { (*hp, *hp.add(9)) };
            (hp, false, proto, off + (version_ihl & 0x0f) as usize * 4)
        }
        ETH_P_IPV6 => {
            let Some(hp) = frame.ptr::<[u8; 40]>(off) else {
                return;
            };
            let hp = hp.cast::<u8>();
            // SAFETY: inside the checked 40 bytes.
            (hp, true, unsafe { *hp.add(6) }, off + 40)
        }
        _ => return,
    };
    let (pproto, sport, dport, tcp_flags) = match proto {
        IPPROTO_TCP => {
            let Some(h) = frame.ptr::<[u8; TCP_HLEN]>(l4) else {
                return;
            };
            let h = h.cast::<u8>();
            // SAFETY: inside the checked header.
            (PROTO_TCP, be16_at(h, 0), be16_at(h, 2), unsafe {
                *h.add(13)
            })
        }
        IPPROTO_UDP => {
            let Some(h) = frame.ptr::<[u8; UDP_HLEN]>(l4) else {
                return;
            };
            let h = h.cast::<u8>();
            (PROTO_UDP, be16_at(h, 0), be16_at(h, 2), 0)
        }
        _ => return,
    };
    // SAFETY: the context's `__sk_buff` is valid for the program's run.
    // One path per family (as Katran does): each builds its addresses and
    // records, so that IPv4's constant words stay constants through the
    // hash instead of meeting IPv6's loaded ones in a merged stack slot.
    if v6 {
        record_answer(
            ctx,
            [
                word_at(hp, 8),
                word_at(hp, 12),
                word_at(hp, 16),
                word_at(hp, 20),
            ],
            [
                word_at(hp, 24),
                word_at(hp, 28),
                word_at(hp, 32),
                word_at(hp, 36),
            ],
            (proto, pproto, sport, dport, tcp_flags),
        );
    } else {
        record_answer(
            ctx,
            [0, 0, V4_MAPPED, word_at(hp, 12)],
            [0, 0, V4_MAPPED, word_at(hp, 16)],
            (proto, pproto, sport, dport, tcp_flags),
        );
    }
}

/// The leaving packet's answer, unless a catalog rule lets that answer in
/// anyway: its destination would be this packet's source, its destination
/// port this packet's source port. So a server answering from its
/// listening port records nothing, and neither does any answer to a flow
/// a rule opened: its own answer is that flow's next packet, which the
/// rule passes. A forwarded packet from an address in no profile (the
/// internet's side) is charged to its source's share; the box's own
/// packets and its profiles' servers are not.
#[inline(always)]
fn record_answer(
    ctx: &TcContext,
    src: Words,
    dst: Words,
    (proto, pproto, sport, dport, tcp_flags): (u8, u32, u16, u16, u8),
) {
    // SAFETY: the context's `__sk_buff` is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY (both): same size, and every bit pattern is a valid byte array.
    let src_addr = unsafe { core::mem::transmute::<Words, Addr>(src) };
    let mut key = FlowKey {
        // SAFETY: as above.
        remote: unsafe { core::mem::transmute::<Words, Addr>(dst) },
        local: src_addr,
        remote_port: dport,
        local_port: sport,
        proto,
        leg: 0,
        pad: [0; 2],
    };
    // Most packets belong to a flow this CPU looked at lately, whether it
    // recorded it or found a rule that answers it: they stop here, before
    // the configuration is read (the interface stands for the leg in the
    // cache's tag). A FIN or RST always goes on, to start the entry's
    // closing timeout.
    if tcp_flags & (flows::TCP_FIN | flows::TCP_RST) == 0 && flows::recently_seen(&key, ifindex) {
        return;
    }
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    let leg = if config.flags & FLAG_APPLIANCE != 0 {
        leg_of(config, ifindex)
    } else {
        0
    };
    key.leg = leg as u8;
    // SAFETY: as above.
    let forwarded = unsafe { (*ctx.skb.skb).ingress_ifindex } != 0;
    let base = config.fast_block_base;
    let ours = if base != 0 {
        // A host whose every address has the default profile: the fast
        // path's table, in the generation it names.
        if port_slot(fast_block_index(base, pproto, sport), sport) != 0 {
            return;
        }
        !forwarded
    } else {
        let generation = (config.generation & 1) as usize;
        let gen_config = &config.gens[generation];
        let mut profile = gen_config.default_profile;
        if gen_config.has_prefixes != 0 {
            let sel = lookup_sel(
                &src_addr,
                generation,
                gen_config.sel_epoch,
                CacheHalf::Destination,
            );
            if sel.profile != PROFILE_NONE {
                profile = sel.profile;
            }
        }
        if profile != PROFILE_NONE && rule_slot(profile, config, DIR_INBOUND, pproto, sport) != 0 {
            return;
        }
        // Or the outbound rows of the answer's destination (this packet's
        // source is an answer to what such a row passed), where they apply:
        // on the leg it sits behind, which is the leg the answer arrives on.
        let outbound = gen_config.outbound_profiles;
        if outbound != 0 {
            // SAFETY: as above.
            let dst_addr = unsafe { core::mem::transmute::<Words, Addr>(dst) };
            let sel = lookup_sel(
                &dst_addr,
                generation,
                gen_config.sel_epoch,
                CacheHalf::Source,
            );
            if sel.profile < 32
                && outbound & (1 << sel.profile) != 0
                && sel.leg == leg + 1
                && rule_slot(sel.profile, config, DIR_OUTBOUND, pproto, sport) != 0
            {
                return;
            }
        }
        !forwarded || profile != PROFILE_NONE
    };
    let share = if ours {
        None
    } else {
        Some(share_key(&src_addr, SHARE_FLOWS))
    };
    flows::record(&key, tcp_flags, share.as_ref(), config.flow_share);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
