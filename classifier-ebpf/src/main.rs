//! portguard's packet path.
//!
//! `portguard` (XDP, ingress) parses each frame with one cursor and a bounds
//! check before every read, decides a verdict, and leaves through a single
//! exit point that counts it. `portguard_egress` (TC, egress) records the
//! connections the host itself opens so that XDP can let their replies in.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use classifier_common::{
    Addr, COUNTER_ENTRIES, Config, Counter, EVENT_BURST_NS, EVENT_REASON_RULE, EVENT_RING_BYTES,
    EVENT_SNAPLEN, Event, EventBudget, EventConfig, FLAG_DROP_ECHO, FLAG_DROP_IPSEC_MEDIA,
    FLAG_EVENTS, FLAG_EVENTS_PASS, FLAG_MONITOR, FLAG_TRACE, FLOW_ENTRIES, FLOW_PORT_ENTRIES,
    FLOW_PORTS_PER_ENTRY, FRAGMENT_ENTRIES, FlowKey, FragKey, FragVerdict, LPM_ENTRIES,
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, MgmtPorts, PCLASS_COUNT, PCLASS_ICMP, PCLASS_OTHER,
    PCLASS_TCP, PCLASS_UDP, PORT_BLOCK_ENTRIES, PROFILE_NONE, PROTO_TCP, PROTO_UDP, PortBlock,
    ProfileSel, REASON_COUNTER_BASE, Reason, VERDICT_COUNT, Verdict, port_block_index,
    reason_counter_index,
};

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
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);
#[map]
static PROFILES: LpmTrie<Addr, ProfileSel> = LpmTrie::with_max_entries(LPM_ENTRIES, 0);
#[map]
static MGMT: LpmTrie<Addr, MgmtPorts> = LpmTrie::with_max_entries(LPM_ENTRIES, 0);
#[map]
static FLOWS: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(FLOW_ENTRIES, 0);
#[map]
static FLOW_PORTS: Array<[u8; FLOW_PORTS_PER_ENTRY as usize]> =
    Array::with_max_entries(FLOW_PORT_ENTRIES, 0);
#[map]
static TRACE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FRAGMENTS: LruHashMap<FragKey, FragVerdict> =
    LruHashMap::with_max_entries(FRAGMENT_ENTRIES, 0);

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
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
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

#[inline(always)]
fn mapped4(b: &[u8], at: usize) -> Addr {
    [
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0xff,
        0xff,
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
    ]
}

#[inline(always)]
fn addr6(b: &[u8], at: usize) -> Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

/// The network layer summary the transport decision needs.
struct L3 {
    src: Addr,
    dst: Addr,
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
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let config = CONFIG.get(0).ok_or(())?;
    let outcome = classify(&frame, config);
    if config.flags & FLAG_TRACE != 0 {
        let _ = TRACE.set(0, outcome.counter, 0);
    }
    if let Some(c) = COUNTERS.get_ptr_mut(outcome.counter) {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        let packets = unsafe {
            (*c).packets += 1;
            (*c).bytes += frame.len() as u64;
            (*c).packets
        };
        // Anomalies are logged when this CPU's count reaches a power of two:
        // a flood costs a logarithmic number of lines, never one per packet.
        if outcome.counter >= ANOMALY_FIRST && packets & (packets - 1) == 0 {
            log_anomaly(ctx, outcome.counter, packets);
        }
    }
    // One test of a word already loaded; everything else about events lives
    // out of line, so the path with events off does not change.
    if config.flags & FLAG_EVENTS != 0 {
        emit_event(ctx, outcome.counter, config.flags);
    }
    Ok(if outcome.pass {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    })
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

/// Emits an event for a drop or would_drop (or a pass, with
/// `FLAG_EVENTS_PASS`) if this CPU's budget has credit left; otherwise counts
/// it as suppressed. The verdict path carries nothing extra for events.
///
/// The event holds the first 128 bytes of the frame, and userspace reads the
/// VLAN tags, addresses and ports from them: this function runs below the
/// classifier's 480-byte frame with 32 bytes of the 512-byte stack left, and
/// a second header parser here (unaligned reads spill) did not fit.
#[inline(never)]
fn emit_event(ctx: &XdpContext, counter: u32, flags: u32) {
    // Rule slots count passes only; reason counters carry their verdict.
    if counter < REASON_COUNTER_BASE && flags & FLAG_EVENTS_PASS == 0 {
        return;
    }
    if counter >= REASON_COUNTER_BASE
        && flags & FLAG_EVENTS_PASS == 0
        && counter_verdict(counter) == Verdict::Pass as u32
    {
        return;
    }
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
    // The coarse clock (a load of the last tick's time, no TSC read) is
    // plenty for a per-second budget, and this runs for every suppressed
    // event of a flood. The event's own time stamp uses the precise clock.
    // SAFETY: helper without arguments; `budget` is this CPU's own value.
    unsafe {
        let now = bpf_ktime_get_coarse_ns();
        let mut credit = (*budget).credit_ns + now.wrapping_sub((*budget).last_ns);
        if credit > EVENT_BURST_NS {
            credit = EVENT_BURST_NS;
        }
        (*budget).last_ns = now;
        if cost == 0 || credit < cost {
            (*budget).credit_ns = credit;
            (*budget).suppressed += 1;
            return false;
        }
        (*budget).credit_ns = credit - cost;
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

#[inline(always)]
fn classify(frame: &Frame, config: &Config) -> Outcome {
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
        return replay_fragment(&l3, config);
    }
    let outcome = classify_l4(frame, &l3, config);
    if l3.fragment {
        // First fragment: the rest of the datagram follows this verdict.
        let verdict = FragVerdict {
            counter: outcome.counter,
            pass: outcome.pass as u32,
        };
        let _ = FRAGMENTS.insert(frag_key(&l3), verdict, 0);
    }
    outcome
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, off: usize) -> Result<L3, Reason> {
    let h = frame.bytes::<20>(off).ok_or(Reason::Malformed)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(Reason::Malformed);
    }
    // Bounds of the whole header, options included.
    frame.ptr::<u8>(off + ihl - 1).ok_or(Reason::Malformed)?;
    let total = be16(&h, 2) as usize;
    if total < ihl || off + total > frame.len() {
        return Err(Reason::Malformed);
    }
    let frag = be16(&h, 6);
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    Ok(L3 {
        src: mapped4(&h, 12),
        dst: mapped4(&h, 16),
        proto: h[9],
        l4: off + ihl,
        end: off + total,
        frag_proto: h[9],
        frag_id: be16(&h, 4) as u32,
        fragment: more || offset != 0,
        later_fragment: offset != 0,
        v6: false,
    })
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, off: usize) -> Result<L3, Reason> {
    let h = frame.bytes::<40>(off).ok_or(Reason::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload = be16(&h, 4) as usize;
    if off + 40 + payload > frame.len() {
        return Err(Reason::Malformed);
    }
    let mut l3 = L3 {
        src: addr6(&h, 8),
        dst: addr6(&h, 24),
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
fn frag_key(l3: &L3) -> FragKey {
    FragKey {
        src: l3.src,
        dst: l3.dst,
        id: l3.frag_id,
        proto: l3.frag_proto,
        pad: [0; 3],
    }
}

#[inline(always)]
fn replay_fragment(l3: &L3, config: &Config) -> Outcome {
    // SAFETY: the value is copied out at once; an LRU entry may be evicted
    // concurrently but its memory stays valid for this RCU section.
    match unsafe { FRAGMENTS.get(frag_key(l3)) } {
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
fn classify_l4(frame: &Frame, l3: &L3, config: &Config) -> Outcome {
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
        IPPROTO_TCP => match frame.bytes::<TCP_HLEN>(l3.l4) {
            Some(h) => classify_ports(
                l3,
                config,
                PROTO_TCP,
                PCLASS_TCP,
                be16(&h, 0),
                be16(&h, 2),
                h[13],
            ),
            None => deny(Reason::Malformed, PCLASS_TCP, config),
        },
        IPPROTO_UDP => match frame.bytes::<UDP_HLEN>(l3.l4) {
            Some(h) => classify_ports(
                l3,
                config,
                PROTO_UDP,
                PCLASS_UDP,
                be16(&h, 0),
                be16(&h, 2),
                0,
            ),
            None => deny(Reason::Malformed, PCLASS_UDP, config),
        },
        IPPROTO_ICMP if !l3.v6 => classify_icmp(frame, l3, config),
        IPPROTO_ICMPV6 if l3.v6 => classify_icmp(frame, l3, config),
        IPPROTO_ESP | IPPROTO_AH if to_media_host(l3, config) => ipsec(config, PCLASS_OTHER),
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

/// The destination's profile in the active generation.
#[inline(always)]
fn profile_of(l3: &L3, config: &Config) -> u32 {
    let generation = (config.generation & 1) as usize;
    let default = config.gens[generation].default_profile;
    if config.gens[generation].has_prefixes == 0 {
        return default;
    }
    match PROFILES.get(Key::new(128, l3.dst)) {
        Some(sel) => match sel.by_generation[generation] {
            PROFILE_NONE => default,
            p => p,
        },
        None => default,
    }
}

#[inline(always)]
fn to_media_host(l3: &L3, config: &Config) -> bool {
    is_media_profile(profile_of(l3, config), config)
}

#[inline(always)]
fn is_media_profile(profile: u32, config: &Config) -> bool {
    let generation = (config.generation & 1) as usize;
    profile < 32 && config.gens[generation].media_profiles & (1 << profile) != 0
}

#[inline(always)]
fn classify_ports(
    l3: &L3,
    config: &Config,
    proto: u32,
    pclass: u32,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Outcome {
    if proto == PROTO_UDP && ((sport == 67 && dport == 68) || (sport == 547 && dport == 546)) {
        return pass(Reason::Dhcp, pclass);
    }

    let profile = profile_of(l3, config);
    if profile != PROFILE_NONE {
        let generation = config.generation & 1;
        if let Some(block) =
            PORT_BLOCKS.get_ptr(port_block_index(profile, generation, proto, dport))
        {
            // Four u16 slots read as one word: no indexing, so no bounds branch.
            // SAFETY: `get_ptr` returned a valid pointer to an 8-byte value.
            let word = unsafe { core::ptr::read_unaligned(block as *const u64) };
            let slot = (word >> ((dport as u64 & 3) * 16)) as u16;
            if slot != 0 {
                return Outcome {
                    counter: slot as u32,
                    pass: true,
                };
            }
        }
    }

    // The lockout guard: no catalog can take it away. Checked after the
    // catalog only so that allowed traffic does not pay for it; a port the
    // catalog allows is counted under its rule.
    if proto == PROTO_TCP
        && is_mgmt_port(config, dport)
        && let Some(m) = MGMT.get(Key::new(128, l3.src))
    {
        let mut i = 0;
        while i < m.ports.len() {
            if m.ports[i] == dport {
                return pass(Reason::Management, pclass);
            }
            i += 1;
        }
    }

    // A pure SYN opens a connection: it is never a reply.
    let syn_only = proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn_only && local_port_has_flows(dport) {
        let flow = FlowKey {
            remote: l3.src,
            local: l3.dst,
            remote_port: sport,
            local_port: dport,
            proto: l3.proto,
            pad: [0; 3],
        };
        if FLOWS.get_ptr(flow).is_some() {
            return pass(Reason::Established, pclass);
        }
    }
    if profile == PROFILE_NONE {
        return deny(Reason::NoProfile, pclass, config);
    }
    if proto == PROTO_UDP && (dport == 500 || dport == 4500) && is_media_profile(profile, config) {
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

#[inline(always)]
fn local_port_has_flows(port: u16) -> bool {
    match FLOW_PORTS.get(port as u32 / FLOW_PORTS_PER_ENTRY) {
        Some(bytes) => {
            // SAFETY: reading 8 bytes of a valid 8-byte map value as one word.
            let word = unsafe { core::ptr::read_unaligned(bytes as *const _ as *const u64) };
            (word >> ((port as u64 % FLOW_PORTS_PER_ENTRY as u64) * 8)) & 0xff != 0
        }
        None => true,
    }
}

/// Records connections the host opens: a TCP SYN without ACK, or any UDP
/// datagram the host sends. XDP then passes packets coming back on them.
#[classifier]
pub fn portguard_egress(ctx: TcContext) -> i32 {
    record_flow(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn record_flow(ctx: &TcContext) {
    let Ok(mut ethertype) = ctx.load::<[u8; 2]>(12).map(u16::from_be_bytes) else {
        return;
    };
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Ok(inner) = ctx.load::<[u8; 2]>(off + 2).map(u16::from_be_bytes) else {
            return;
        };
        ethertype = inner;
        off += 4;
    }
    let (src, dst, proto, l4) = match ethertype {
        ETH_P_IP => {
            let Ok(vihl) = ctx.load::<u8>(off) else {
                return;
            };
            let Ok(frag) = ctx.load::<[u8; 2]>(off + 6).map(u16::from_be_bytes) else {
                return;
            };
            if frag & 0x1fff != 0 {
                return;
            }
            let (Ok(proto), Ok(s), Ok(d)) = (
                ctx.load::<u8>(off + 9),
                ctx.load::<[u8; 4]>(off + 12),
                ctx.load::<[u8; 4]>(off + 16),
            ) else {
                return;
            };
            let map4 = |a: [u8; 4]| {
                [
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
                ]
            };
            (map4(s), map4(d), proto, off + (vihl & 0x0f) as usize * 4)
        }
        ETH_P_IPV6 => {
            let (Ok(proto), Ok(s), Ok(d)) = (
                ctx.load::<u8>(off + 6),
                ctx.load::<Addr>(off + 8),
                ctx.load::<Addr>(off + 24),
            ) else {
                return;
            };
            (s, d, proto, off + 40)
        }
        _ => return,
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let (Ok(sport), Ok(dport)) = (
        ctx.load::<[u8; 2]>(l4).map(u16::from_be_bytes),
        ctx.load::<[u8; 2]>(l4 + 2).map(u16::from_be_bytes),
    ) else {
        return;
    };
    if proto == IPPROTO_TCP {
        let Ok(flags) = ctx.load::<u8>(l4 + 13) else {
            return;
        };
        // SYN without ACK: the host opens the connection.
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return;
        }
    }
    let key = FlowKey {
        remote: dst,
        local: src,
        remote_port: dport,
        local_port: sport,
        proto,
        pad: [0; 3],
    };
    let _ = FLOWS.insert(key, 0, 0);
    if let Some(bytes) = FLOW_PORTS.get_ptr_mut(sport as u32 / FLOW_PORTS_PER_ENTRY) {
        // SAFETY: a byte store into a valid map value; other CPUs only ever
        // store 1 into their own bytes, so no update is lost.
        unsafe { (*bytes)[(sport as usize) & (FLOW_PORTS_PER_ENTRY as usize - 1)] = 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
