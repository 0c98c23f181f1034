//! Flow state: the answers the box expects.
//!
//! The TC egress recorder writes an entry for each flow that leaves a leg
//! (the box's own connections, and on an appliance what the kernel really
//! forwarded, after it routed and validated the frame): "a packet from the
//! destination back to the source, arriving on this leg, is an answer". XDP
//! lets such answers in as `established`.
//!
//! Entries live in two tables, as Linux conntrack's assured and unassured
//! entries do, so that what one side alone can create (a SYN, a first
//! datagram: all a spoofer can send) never pushes out what both sides have
//! used:
//! - `FLOWS_NEW`, an LRU: a flow only its opener has spoken on. A flood
//!   turns it over; each source prefix may open only `Config::flow_share`
//!   entries per window there, so no single source or spoofed /64 can take
//!   it.
//! - `FLOWS`, a hash that never evicts: flows the answerer has spoken on
//!   too (TCP past the handshake; UDP answered for at least 2 s). A full
//!   table refuses confirmations (counted) rather than dropping a live flow;
//!   the daemon's sweeper removes idle entries.
//!
//! Every segment the rule side sends refreshes (or re-creates) its entry,
//! not only the SYN, so a flow table lost to a restart or a failover fills
//! again from the traffic (mid-stream pickup).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    programs::TcContext,
};
use classifier_common::{
    Addr, DIR_INBOUND, DIR_OUTBOUND, FLAG_APPLIANCE, FLOW_ANSWERED, FLOW_CLOSING,
    FLOW_CONFIRM_REFUSED, FLOW_MARK_SHIFT, FLOW_PORTS_PER_ENTRY, FLOW_SHARE_WINDOW_S,
    FLOW_UDP_STREAM_S, FlowKey, FlowState, PROFILE_NONE, PROTO_TCP, PROTO_UDP, RECENT_FLOW_SKIPS,
    RECENT_FLOW_SLOTS, RecentFlow, SHARE_FLOWS, STAT_CONFIRMED_REFUSED, STAT_NEW_INSERTS,
    STAT_NEW_REFUSED, STAT_PROMOTED, Share, ShareKey, fast_block_index, media::MEDIA_SLOT_FLAG,
};

use crate::{
    decide::{CacheHalf, leg_of, lookup_sel, port_slot, rule_slot, share_key},
    events::{Hook, emit_refusal, refusal_wanted},
    maps::{
        CONFIG, FLOW_PORTS, FLOW_SHARES, FLOW_STATS, FLOWS, FLOWS_NEW, RECENT_ANSWERS, RECENT_FLOWS,
    },
    parse::{
        ETH_P_IP, ETH_P_IPV6, Frame, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_HLEN, TCP_RST,
        TCP_SYN, UDP_HLEN, V4_MAPPED, Words, be16_at, ethernet, parse_ipv4, parse_ipv6, word_at,
    },
};

const EEXIST: i32 = 17;

/// Seconds of the coarse monotonic clock (a helper call, about 5 ns): read
/// only when an entry is made, confirmed, or refreshed.
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The refresh mark: jiffies, coarsened. The verifier inlines the read into
/// one load, so the packet path compares it with the entry's before it
/// pays for a clock read and a store to a line other CPUs share.
#[inline(always)]
fn mark() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_jiffies64() } >> FLOW_MARK_SHIFT) as u32
}

#[inline(always)]
pub fn count(stat: u32) {
    if let Some(c) = FLOW_STATS.get_ptr_mut(stat) {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe { *c += 1 };
    }
}

/// Notes a packet of the flow: `seen` moves on when the mark has, and a
/// FIN or RST starts the short closing timeout.
#[inline(always)]
fn refresh(v: *mut FlowState, tcp_flags: u8) {
    let m = mark();
    // SAFETY: `v` points into a map value; a racing CPU writes the same
    // kind of values, and either write is a correct refresh.
    unsafe {
        if (*v).mark != m {
            (*v).mark = m;
            (*v).seen = now_s();
        }
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 && (*v).flags & FLOW_CLOSING == 0 {
            core::hint::cold_path();
            (*v).flags |= FLOW_CLOSING;
            (*v).seen = now_s();
        }
    }
}

/// XDP: whether the arriving packet, keyed as its expected-answer entry
/// would be, is an answer. A confirmed flow found lately on this CPU skips
/// the lookup on 63 answers in 64 (the hash lookup of a 40-byte key was
/// most of an answer's cost); otherwise a confirmed entry is one lookup,
/// and an unconfirmed one may be confirmed by this very packet.
///
/// The cache cannot vouch for a flow that is gone: the sweeper removes
/// only entries idle for 10 s or more, and a slot is stale once the
/// refresh mark has moved on (about a second), so any entry a slot vouches
/// for was found within the mark. A FIN or RST always looks the entry up,
/// to start its closing timeout.
#[inline(always)]
pub fn answer(key: &FlowKey, tcp_flags: u8) -> Answer {
    let ending = tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let tag = tag_of(key, 0);
    let slot = RECENT_ANSWERS.get_ptr_mut(slot_of(tag));
    let m = mark();
    if !ending && let Some(slot) = slot {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe {
            if (*slot).tag == tag && (*slot).skips > 0 && (*slot).mark == m {
                (*slot).skips -= 1;
                return Answer::Yes;
            }
        }
    }
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        refresh(v, tcp_flags);
        if let Some(slot) = slot {
            // SAFETY: as above.
            unsafe {
                *slot = RecentFlow {
                    tag,
                    skips: if ending { 0 } else { RECENT_FLOW_SKIPS },
                    mark: m,
                };
            }
        }
        return Answer::Yes;
    }
    answer_unconfirmed(key, tcp_flags)
}

/// What [`answer`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    No,
    Yes,
    /// An answer that would have confirmed its flow, but `FLOWS` was full.
    ConfirmationRefused,
}

/// A flow's tag in the per-CPU caches: a hash of its key (five words) and
/// `salt`, never 0 (an empty slot's tag).
#[inline(always)]
fn tag_of(key: &FlowKey, salt: u32) -> u64 {
    // SAFETY: `FlowKey` is 40 bytes, 8-byte aligned, no padding: five words.
    let w = unsafe { &*(key as *const FlowKey).cast::<[u64; 5]>() };
    (w[0]
        ^ w[1].rotate_left(13)
        ^ w[2].rotate_left(29)
        ^ w[3].rotate_left(43)
        ^ w[4]
        ^ u64::from(salt) << 40)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        | 1
}

/// The cache slot of a tag.
#[inline(always)]
fn slot_of(tag: u64) -> u32 {
    (tag >> 54) as u32 & (RECENT_FLOW_SLOTS - 1)
}

/// An answer to an unconfirmed flow, which it may confirm:
/// - TCP: the answerer's first segment past the handshake (ACK without SYN
///   or RST). Its stack sends one only once it has accepted the opener's
///   ACK, which a spoofer who never saw the SYN-ACK cannot forge.
/// - UDP: an answer at least `FLOW_UDP_STREAM_S` after the entry was made,
///   after an earlier one: a stream, not a query and its reply.
///
/// Out of line: the confirmed answer, the common one, stays short.
#[inline(never)]
fn answer_unconfirmed(key: &FlowKey, tcp_flags: u8) -> Answer {
    let Some(v) = FLOWS_NEW.get_ptr_mut(key) else {
        return Answer::No;
    };
    let now = now_s();
    let m = mark();
    // SAFETY: a copy of a map value this program's CPU may write concurrently
    // with another's; the fields are words.
    let state = unsafe { *v };
    let closing = if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        FLOW_CLOSING
    } else {
        0
    };
    let confirms = if key.proto == IPPROTO_TCP {
        tcp_flags & TCP_ACK != 0 && tcp_flags & (TCP_SYN | TCP_RST) == 0
    } else {
        state.flags & FLOW_ANSWERED != 0 && now.wrapping_sub(state.created) >= FLOW_UDP_STREAM_S
    };
    if !confirms {
        // SAFETY: as above.
        unsafe {
            (*v).flags |= FLOW_ANSWERED | closing;
            (*v).seen = now;
        }
        return Answer::Yes;
    }
    // A confirmation `FLOWS` refused (it was full) is tried again once the
    // mark moves on, not on every packet.
    if state.flags & FLOW_CONFIRM_REFUSED != 0 && state.mark == m {
        return Answer::Yes;
    }
    let confirmed = FlowState {
        seen: now,
        created: state.created,
        mark: m,
        flags: (state.flags | FLOW_ANSWERED | closing) & !FLOW_CONFIRM_REFUSED,
    };
    match FLOWS.insert(key, confirmed, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(STAT_PROMOTED);
            let _ = FLOWS_NEW.remove(key);
        }
        // Another CPU confirmed it first.
        Err(e) if e == -EEXIST => {
            let _ = FLOWS_NEW.remove(key);
        }
        Err(_) => {
            // `FLOWS` is full: the flow goes on, unconfirmed.
            count(STAT_CONFIRMED_REFUSED);
            // SAFETY: as above.
            unsafe {
                (*v).mark = m;
                (*v).seen = now;
                (*v).flags |= FLOW_ANSWERED | FLOW_CONFIRM_REFUSED | closing;
            }
            return Answer::ConfirmationRefused;
        }
    }
    Answer::Yes
}

/// TC egress: the packet leaving expects `key` as its answer. Refreshes the
/// entry, or makes an unconfirmed one, charged to `share` (the source
/// prefix of a forwarded packet from outside every profile; `None` for the
/// box's own packets and its profiles' addresses) within `limit`. False
/// when the share was spent and no entry was made.
#[inline(always)]
pub fn record(key: &FlowKey, tcp_flags: u8, share: Option<&ShareKey>, limit: u32) -> bool {
    let ending = tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        refresh(v, tcp_flags);
        return true;
    }
    if let Some(v) = FLOWS_NEW.get_ptr_mut(key) {
        refresh(v, tcp_flags);
        return true;
    }
    // A reset opens nothing.
    if tcp_flags & TCP_RST != 0 {
        return true;
    }
    if let Some(share) = share
        && !take_share(share, limit)
    {
        count(STAT_NEW_REFUSED);
        return false;
    }
    let now = now_s();
    let state = FlowState {
        seen: now,
        created: now,
        mark: mark(),
        flags: if ending { FLOW_CLOSING } else { 0 },
    };
    if FLOWS_NEW.insert(key, state, 0).is_ok() {
        count(STAT_NEW_INSERTS);
    }
    mark_port(key.local_port);
    true
}

/// A flow the recorder looked at lately on this CPU, leaving by interface
/// `ifindex` (the key's leg is not known yet): 63 packets in 64 of it
/// skip the rest (a media flow sends one every 20 ms, and the table lookup
/// cost more than the rest of the recorder). The 64th refreshes the entry,
/// or makes it again if the sweeper or the LRU took it meanwhile, and so
/// does the first packet once the refresh mark has moved on (about a
/// second at HZ=250). Bounded cost of the trade: after the entry is lost,
/// or a reload changes whether a rule answers the flow, at most 63 more
/// packets, within one mark, leave before the recorder looks again.
#[inline(always)]
pub fn recently_seen(key: &FlowKey, ifindex: u32) -> bool {
    let tag = tag_of(key, ifindex);
    if let Some(slot) = RECENT_FLOWS.get_ptr_mut(slot_of(tag)) {
        let m = mark();
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe {
            if (*slot).tag == tag && (*slot).skips > 0 && (*slot).mark == m {
                (*slot).skips -= 1;
                return true;
            }
            (*slot).tag = tag;
            (*slot).skips = RECENT_FLOW_SKIPS;
            (*slot).mark = m;
        }
    }
    false
}

/// Takes one entry from a source's share of the current window; false when
/// it is spent (`limit` 0: no limit).
#[inline(always)]
pub fn take_share(key: &ShareKey, limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let window = now_s() / FLOW_SHARE_WINDOW_S;
    match FLOW_SHARES.get_ptr_mut(key) {
        // SAFETY: a map value; two CPUs racing may both count one entry,
        // which only loosens the bound by a CPU's worth.
        Some(s) => unsafe {
            if (*s).window != window {
                (*s).window = window;
                (*s).count = 1;
                return true;
            }
            if (*s).count >= limit {
                return false;
            }
            (*s).count += 1;
            true
        },
        None => {
            let _ = FLOW_SHARES.insert(key, Share { window, count: 1 }, 0);
            true
        }
    }
}

/// Marks `port` in `FLOW_PORTS` so that XDP looks its answers up.
#[inline(always)]
fn mark_port(port: u16) {
    if let Some(bytes) = FLOW_PORTS.get_ptr_mut(port as u32 / FLOW_PORTS_PER_ENTRY) {
        let i = (port as usize) & (FLOW_PORTS_PER_ENTRY as usize - 1);
        // SAFETY: a byte store into a valid map value; other CPUs only ever
        // store 1 into their own bytes, so no update is lost. Read first: a
        // store to a shared line on every packet would bounce it between CPUs.
        unsafe {
            if (*bytes)[i] == 0 {
                (*bytes)[i] = 1;
            }
        }
    }
}

/// Whether some entry expects an answer to local `port`: a zero byte proves
/// none does, and spares the table lookups.
#[inline(always)]
pub fn local_port_has_flows(port: u16) -> bool {
    match FLOW_PORTS.get(port as u32 / FLOW_PORTS_PER_ENTRY) {
        Some(bytes) => {
            // SAFETY: reading 8 bytes of a valid 8-byte map value as one word.
            let word = unsafe { core::ptr::read_unaligned(bytes as *const _ as *const u64) };
            (word >> ((port as u64 % FLOW_PORTS_PER_ENTRY as u64) * 8)) & 0xff != 0
        }
        None => true,
    }
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
pub(crate) fn record_flow(ctx: &TcContext) {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.skb.skb.cast(),
    };
    let (ethertype, off) = ethernet!(frame, return);
    // The full parser: the recorder meets IPv6 extension headers too. A
    // later fragment carries no ports; a malformed header is not recorded.
    let packet_len = ctx.len() as usize;
    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4(&frame, off, packet_len),
        ETH_P_IPV6 => parse_ipv6(&frame, off, packet_len),
        _ => return,
    };
    let Ok(l3) = l3 else {
        return;
    };
    if l3.later_fragment {
        return;
    }
    let (proto, l4) = (l3.proto, l3.l4);
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
    if l3.v6 {
        let Some(hp) = frame.ptr::<[u8; 32]>(l3.addrs) else {
            return;
        };
        let hp = hp.cast::<u8>();
        record_answer(
            ctx,
            [
                word_at(hp, 0),
                word_at(hp, 4),
                word_at(hp, 8),
                word_at(hp, 12),
            ],
            [
                word_at(hp, 16),
                word_at(hp, 20),
                word_at(hp, 24),
                word_at(hp, 28),
            ],
            (proto, pproto, sport, dport, tcp_flags),
        );
    } else {
        let Some(hp) = frame.ptr::<[u8; 8]>(l3.addrs) else {
            return;
        };
        let hp = hp.cast::<u8>();
        record_answer(
            ctx,
            [0, 0, V4_MAPPED, word_at(hp, 0)],
            [0, 0, V4_MAPPED, word_at(hp, 4)],
            (proto, pproto, sport, dport, tcp_flags),
        );
    }
}

/// Whether a rule with slot value `slot` lets every answer in: any rule but
/// a media rule, which lets in only media (an answer to a flow the host
/// sent from a media port, a DNS answer say, needs the flow recorded), and
/// one with address sets, which lets in only its peers (an answer may come
/// from outside them).
#[inline(always)]
fn answered_by_rule(slot: u16) -> bool {
    slot != 0 && slot & (MEDIA_SLOT_FLAG | classifier_common::SLOT_PEERS) == 0
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
pub(crate) fn record_answer(
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
    if tcp_flags & (TCP_FIN | TCP_RST) == 0 && recently_seen(&key, ifindex) {
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
        if answered_by_rule(port_slot(fast_block_index(base, pproto, sport), sport)) {
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
        if profile != PROFILE_NONE
            && answered_by_rule(rule_slot(profile, config, DIR_INBOUND, pproto, sport))
        {
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
                && answered_by_rule(rule_slot(sel.profile, config, DIR_OUTBOUND, pproto, sport))
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
    if !record(&key, tcp_flags, share.as_ref(), config.flow_share) {
        core::hint::cold_path();
        let frame = Frame {
            start: ctx.data(),
            end: ctx.data_end(),
            ctx: ctx.skb.skb.cast(),
        };
        if refusal_wanted(config.flags) {
            emit_refusal(&frame, Hook::Tc, STAT_NEW_REFUSED, ifindex, ctx.len());
        }
    }
}
