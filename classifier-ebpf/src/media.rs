//! Media rules (`payload = "media"` in the catalog): a UDP datagram to one
//! passes only if its first bytes are media (`classifier_common::media::
//! classify`), it does not come from an amplification source port, and, if
//! it is a STUN request, its source and subnet are within their budgets.
//! A refused datagram is still an answer if it answers a recorded flow: the
//! callers look the flow up before they count the refusal.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use classifier_common::{
    Config, FLAG_MEDIA_MONITOR, FLAG_MONITOR, ShareKey,
    media::{self, HEAD, MEDIA_INDEX_MASK, MediaKind, MediaRefusal, StunBucket},
    media_pass_counter, media_refusal_counter,
};

use crate::{
    decide::Outcome,
    maps::{REFLECTION_PORTS, STUN_BUDGET},
    parse::{Frame, UDP_HLEN},
};

/// What the payload check found for a datagram on a media rule.
#[derive(Clone, Copy)]
pub(crate) enum Check {
    Pass,
    /// A STUN request: passes if the budget allows (needs the source address).
    Budget,
    Refuse(MediaRefusal),
}

/// The check of a datagram whose UDP header is at `l4` and whose IP packet
/// ends at `end`, from source port `sport`, in generation `generation`.
#[inline(always)]
pub(crate) fn check(frame: &Frame, generation: u32, l4: usize, end: usize, sport: u16) -> Check {
    if is_reflection_port(generation, sport) {
        core::hint::cold_path();
        return Check::Refuse(MediaRefusal::Reflection);
    }
    match kind(frame, l4, end) {
        MediaKind::NotMedia => {
            core::hint::cold_path();
            Check::Refuse(MediaRefusal::NotMedia)
        }
        MediaKind::StunRequest => Check::Budget,
        _ => Check::Pass,
    }
}

/// The payload's kind. The classifier never looks at bytes past the
/// payload's length, so the bytes read past it (Ethernet padding) do not
/// matter; a frame too short for the header and 8 bytes is read with 4.
#[inline(always)]
fn kind(frame: &Frame, l4: usize, end: usize) -> MediaKind {
    let len = end - l4 - UDP_HLEN;
    if let Some(h) = frame.bytes::<{ UDP_HLEN + HEAD }>(l4) {
        let head = [h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]];
        return media::classify(&head, len);
    }
    core::hint::cold_path();
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

/// The pass of media rule slot value `value`.
#[inline(always)]
pub(crate) fn pass(value: u16) -> Outcome {
    Outcome {
        counter: media_pass_counter(u32::from(value & MEDIA_INDEX_MASK)),
        pass: true,
    }
}

/// The refusal of a datagram on media rule slot value `value`: a drop, or
/// in monitor mode (or `--media-check monitor`) a pass counted as
/// `would_drop`.
#[inline(always)]
pub(crate) fn refuse(value: u16, refusal: MediaRefusal, config: &Config) -> Outcome {
    let monitor = config.flags & (FLAG_MONITOR | FLAG_MEDIA_MONITOR) != 0;
    Outcome {
        counter: media_refusal_counter(
            u32::from(value & MEDIA_INDEX_MASK),
            refusal as u32,
            monitor,
        ),
        pass: monitor,
    }
}

/// Whether a STUN request from `src` is within its source's and its
/// subnet's budgets; takes a token from each it passes.
#[inline(never)]
pub(crate) fn within_budget(src: &classifier_common::Addr, config: &Config) -> bool {
    let (source, net) = media::budget_keys(src);
    // SAFETY: a helper without arguments.
    let now_us = unsafe { bpf_ktime_get_coarse_ns() } / 1_000;
    take(&source, now_us, config.stun_source_cost_us, config.stun_source_burst)
        && take(&net, now_us, config.stun_net_cost_us, config.stun_net_burst)
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

const _: () = assert!(size_of::<StunBucket>() == 16);
