//! Media rules (`payload = "media"` in the catalog). The packet path asks
//! [`plainly_media`] of a datagram on such a rule: media from a port that is
//! no amplifier's, and no STUN request, passes at once under its rule. Any
//! other goes by a tail call to the media program ([`run`]), which decides
//! and counts it on its own: the reflection guard, the classifier's verdict,
//! the per-source and per-subnet STUN budget, and for a refusal the flow
//! tables, whose answers pass unchecked. A program of its own because the
//! XDP program's decision is near the verifier's limit: the call site adds
//! one path that ends in the tail call, where the decision inline would
//! multiply every path after it.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use classifier_common::{
    COUNTER_ENTRIES, Config, FLAG_MEDIA_MONITOR, FLAG_MONITOR, FlowKey, PCLASS_UDP, Reason,
    ShareKey, Verdict,
    media::{self, HEAD, MediaKind, MediaRefusal, MediaScratch},
    media_reason, reason_counter_index,
};

use crate::{
    decide::{Outcome, pass},
    events::finish,
    flows::{self, Answer, local_port_has_flows},
    maps::{CONFIG, MEDIA_INDEX, MEDIA_PROG, MEDIA_SCRATCH, REFLECTION_PORTS, STUN_BUDGET},
    parse::{Frame, IPPROTO_UDP, L3, UDP_HLEN, be16_at},
};

/// Whether a datagram on a media rule passes without more ado: not from an
/// amplification source port, and media that is not a STUN request (which
/// the budget must see). `l4` is the UDP header's offset, `end` the IP
/// packet's.
#[inline(always)]
pub(crate) fn plainly_media(
    frame: &Frame,
    generation: u32,
    l4: usize,
    end: usize,
    sport: u16,
) -> bool {
    !is_reflection_port(generation, sport)
        && !matches!(
            kind(frame, l4, end),
            MediaKind::NotMedia | MediaKind::StunRequest
        )
}

/// The payload's kind. The classifier never looks at bytes past the
/// payload's length, so the bytes read past it (Ethernet padding) do not
/// matter; a frame too short for the header and 8 bytes is read with 4.
#[inline(always)]
fn kind(frame: &Frame, l4: usize, end: usize) -> MediaKind {
    if end < l4 + UDP_HLEN {
        return MediaKind::NotMedia;
    }
    let len = end - l4 - UDP_HLEN;
    if let Some(h) = frame.bytes::<{ UDP_HLEN + HEAD }>(l4) {
        let head = [h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]];
        return media::classify(&head, len);
    }
    match frame.bytes::<{ UDP_HLEN + 4 }>(l4) {
        Some(h) => media::classify(&[h[8], h[9], h[10], h[11], 0, 0, 0, 0], len),
        None => MediaKind::NotMedia,
    }
}

#[inline(always)]
fn is_reflection_port(generation: u32, sport: u16) -> bool {
    let (index, bit) = media::reflection_index(generation & 1, sport);
    match REFLECTION_PORTS.get(index) {
        Some(word) => *word & bit != 0,
        None => false,
    }
}

/// What the caller knows of the frame, for the media program.
pub(crate) struct Handoff {
    /// The slot value (`MEDIA_SLOT_FLAG` and the rule slot).
    pub(crate) slot: u16,
    pub(crate) leg: u32,
    pub(crate) addrs: usize,
    pub(crate) l4: usize,
    pub(crate) end: usize,
    pub(crate) v6: bool,
    pub(crate) budget: bool,
    pub(crate) generation: u32,
}

/// Tail-calls the media program with `h` in this CPU's `MEDIA_SCRATCH`.
/// Returns only if the call fails (no media program installed). In line:
/// the kernel refuses a tail call from a subprogram without BTF.
#[inline(always)]
pub(crate) fn hand_off(ctx: *mut core::ffi::c_void, h: &Handoff) {
    core::hint::cold_path();
    let Some(s) = MEDIA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array value is only touched by this CPU.
    unsafe {
        *s = MediaScratch {
            slot: u32::from(h.slot & media::MEDIA_INDEX_MASK),
            leg: h.leg,
            addrs: h.addrs as u32,
            l4: h.l4 as u32,
            payload_len: (h.end - h.l4 - UDP_HLEN) as u32,
            v6: u32::from(h.v6),
            budget: u32::from(h.budget),
            generation: h.generation,
        };
    }
    let ctx = XdpContext::new(ctx.cast());
    // SAFETY: the media program is an XDP program over the same frame.
    unsafe { MEDIA_PROG.tail_call(&ctx, 0) };
}

/// Offsets the media program accepts from the scratch: a frame's headers
/// lie within its first bytes (two VLAN tags, IPv6 and six extension
/// headers of at most this much).
const MAX_HEADERS: u32 = 1_024;

/// The media program: decides and counts one datagram the packet path
/// handed off.
#[inline(always)]
pub(crate) fn run(ctx: &XdpContext) -> u32 {
    let (Some(config), Some(s)) = (CONFIG.get(0), MEDIA_SCRATCH.get(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let s = *s;
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.ctx.cast(),
    };
    let leg = s.leg & (classifier_common::MAX_LEGS - 1);
    let outcome = decide(&frame, config, &s);
    finish(ctx, config, outcome, leg * COUNTER_ENTRIES)
}

#[inline(always)]
fn decide(frame: &Frame, config: &Config, s: &MediaScratch) -> Outcome {
    let slot = s.slot & u32::from(media::MEDIA_INDEX_MASK);
    let rule = Outcome {
        counter: slot,
        pass: true,
    };
    if s.l4 >= MAX_HEADERS || s.addrs >= MAX_HEADERS {
        return rule;
    }
    let l3 = L3 {
        addrs: s.addrs as usize,
        proto: IPPROTO_UDP,
        l4: s.l4 as usize,
        end: s.l4 as usize + UDP_HLEN + (s.payload_len & 0xffff) as usize,
        frag_proto: IPPROTO_UDP,
        frag_id: 0,
        fragment: false,
        later_fragment: false,
        v6: s.v6 != 0,
    };
    let Some(ports) = frame.ptr::<[u8; 4]>(l3.l4) else {
        return rule;
    };
    let ports = ports.cast::<u8>();
    let (sport, dport) = (be16_at(ports, 0), be16_at(ports, 2));
    let refusal = if is_reflection_port(s.generation, sport) {
        MediaRefusal::Reflection
    } else {
        match kind(frame, l3.l4, l3.end) {
            MediaKind::NotMedia => MediaRefusal::NotMedia,
            MediaKind::StunRequest => {
                if s.budget == 0 || within_budget(&l3.src(frame), config) {
                    return rule;
                }
                MediaRefusal::RateLimited
            }
            _ => return rule,
        }
    };
    // Answers to recorded flows are not checked again.
    if local_port_has_flows(dport) {
        let flow = FlowKey {
            remote: l3.src(frame),
            local: l3.dst(frame),
            remote_port: sport,
            local_port: dport,
            proto: IPPROTO_UDP,
            leg: s.leg as u8,
            pad: [0; 2],
        };
        if !matches!(flows::answer(&flow, 0), Answer::No) {
            return pass(Reason::Established, PCLASS_UDP);
        }
    }
    refuse(slot, refusal, config)
}

/// A refusal under its media rule's pseudo-reason: a drop, or in monitor
/// mode (or `--media-check monitor`) a pass counted as `would_drop`.
#[inline(always)]
fn refuse(slot: u32, refusal: MediaRefusal, config: &Config) -> Outcome {
    let index = match MEDIA_INDEX.get(slot) {
        Some(i) if *i != 0 => *i - 1,
        // A media slot without an index cannot be installed; count it as
        // the first media rule rather than lose it.
        _ => 0,
    };
    let monitor = config.flags & (FLAG_MONITOR | FLAG_MEDIA_MONITOR) != 0;
    let verdict = if monitor {
        Verdict::WouldDrop
    } else {
        Verdict::Drop
    };
    Outcome {
        counter: reason_counter_index(
            media_reason(index % media::MAX_MEDIA_RULES, refusal as u32),
            verdict as u32,
            PCLASS_UDP,
        ),
        pass: monitor,
    }
}

/// Whether a STUN request from `src` is within its source's and its
/// subnet's budgets; takes a token from each it passes.
#[inline(always)]
fn within_budget(src: &classifier_common::Addr, config: &Config) -> bool {
    let (source, net) = media::budget_keys(src);
    // SAFETY: a helper without arguments.
    let now_us = unsafe { bpf_ktime_get_coarse_ns() } / 1_000;
    take(
        &source,
        now_us,
        config.stun_source_cost_us,
        config.stun_source_burst,
    ) && take(&net, now_us, config.stun_net_cost_us, config.stun_net_burst)
}

#[inline(always)]
fn take(key: &ShareKey, now_us: u64, cost_us: u32, burst: u32) -> bool {
    if cost_us == 0 {
        return true;
    }
    match STUN_BUDGET.get_ptr_mut(key) {
        // SAFETY: a map value; two CPUs racing on one bucket may both take
        // the last token, which loosens the bound by a CPU's worth.
        Some(b) => unsafe {
            let (ok, next) = media::take_token(Some(*b), now_us, cost_us, burst);
            *b = next;
            ok
        },
        None => {
            let (ok, next) = media::take_token(None, now_us, cost_us, burst);
            let _ = STUN_BUDGET.insert(key, next, 0);
            ok
        }
    }
}
