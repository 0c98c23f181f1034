//! The single exit of the XDP program: counting the verdict, and what is
//! off in the common case (the tests' trace, rate-limited anomaly lines,
//! packet events within a per-CPU budget).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes,
        bpf_xdp_load_bytes,
    },
    maps::ring_buf::RingBufEntry,
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use classifier_common::{
    Config, EVENT_BURST_NS, EVENT_REASON_FLOW_REFUSED, EVENT_REASON_RULE, EVENT_SNAPLEN, Event,
    EventBudget, FLAG_EVENTS, FLAG_EVENTS_PASS, FLAG_TRACE, PCLASS_COUNT, REASON_COUNTER_BASE,
    Reason, VERDICT_COUNT, Verdict, reason_counter_index,
};

use crate::{
    decide::Outcome,
    maps::{COUNTERS, EVENT_BUDGET, EVENT_CONFIG, EVENTS},
    parse::Frame,
};

/// Counts the outcome and turns it into an action. Everything that is off
/// in the common case (the trace, anomaly logging, events) is one test here
/// and a call to [`after_count`] when it is on: few values stay live across
/// the counter lookup, so the common packet spills nothing.
#[inline(always)]
pub(crate) fn finish(ctx: &XdpContext, config: &Config, outcome: Outcome, leg_base: u32) -> u32 {
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
    if flags & SLOW_EXIT_FLAGS != 0 {
        core::hint::cold_path();
        // Events are on by default, and most packets pass: a pass that no
        // event is wanted for must not pay the call.
        if trace_on(flags)
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

/// Whether the tests' trace is on: only in an object built for the tests
/// (feature `trace`); the shipped object has no `TRACE` map, and no flag
/// bit makes its exit look for one.
#[inline(always)]
fn trace_on(flags: u32) -> bool {
    cfg!(feature = "trace") && flags & FLAG_TRACE != 0
}

/// The flags that take the exit off its short path.
const SLOW_EXIT_FLAGS: u32 = if cfg!(feature = "trace") {
    FLAG_TRACE | FLAG_EVENTS
} else {
    FLAG_EVENTS
};

/// Anomalies are logged when this CPU's count reaches a power of two: a
/// flood costs a logarithmic number of lines, never one per packet. (A
/// count of 0 means the counter could not be read.)
#[inline(always)]
pub(crate) fn anomaly_log_due(counter: u32, packets: u64) -> bool {
    counter >= ANOMALY_FIRST && packets & packets.wrapping_sub(1) == 0 && packets != 0
}

/// The trace (tests), the anomaly log and packet events: out of line, so
/// that the path with all three off carries none of their code.
#[inline(never)]
pub(crate) fn after_count(ctx: &XdpContext, flags: u32, counter: u32, packets: u64) {
    #[cfg(feature = "trace")]
    if trace_on(flags) {
        let _ = crate::maps::TRACE.set(0, counter, 0);
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
pub(crate) fn event_wanted(flags: u32, counter: u32) -> bool {
    flags & FLAG_EVENTS != 0
        && (flags & FLAG_EVENTS_PASS != 0
            || counter >= REASON_COUNTER_BASE && counter_verdict(counter) != Verdict::Pass as u32)
}

/// Counter indexes from here on are the anomaly reasons (malformed and after,
/// in any verdict): see `Reason`'s order.
pub(crate) const ANOMALY_FIRST: u32 = reason_counter_index(Reason::Malformed as u32, 0, 0);

#[inline(never)]
pub(crate) fn log_anomaly(ctx: &XdpContext, counter: u32, packets: u64) {
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
pub(crate) fn emit_event(ctx: &XdpContext, counter: u32) {
    let Some(mut entry) = reserve_event() else {
        return;
    };
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

/// An event from this CPU's budget and the ring: `None` (counted as
/// suppressed) when the budget or the ring has no room.
#[inline(always)]
fn reserve_event() -> Option<RingBufEntry<Event>> {
    let budget = EVENT_BUDGET.get_ptr_mut(0)?;
    if !take_credit(budget) {
        return None;
    }
    let Some(entry) = EVENTS.reserve::<Event>(0) else {
        // The reader is behind and the ring is full: as good as suppressed.
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe { (*budget).suppressed += 1 };
        return None;
    };
    // SAFETY: as above.
    unsafe { (*budget).emitted += 1 };
    Some(entry)
}

/// Whether a refused entry gets an event: events are on.
#[inline(always)]
pub(crate) fn refusal_wanted(flags: u32) -> bool {
    flags & FLAG_EVENTS != 0
}

/// Which program a frame is in: the context and the helper that copies it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Xdp,
    Tc,
}

/// An event for a packet that went on (verdict pass) but whose flow or
/// fragment entry was refused (`stat`: the refusal's `FLOW_STATS` index),
/// within the same budget as the drops' events: who spent a source share,
/// or whose confirmation a full table refused. Out of line, on paths a
/// packet takes only when something is refused.
///
/// `ifindex` and `len` come from the caller (the leg's interface, the
/// packet's length): the verifier allows the context's fields to be read
/// only at fixed offsets of the untouched context pointer, which a call
/// does not keep.
/// The caller asks only with `FLAG_EVENTS` on ([`refusal_wanted`]).
#[inline(never)]
pub(crate) fn emit_refusal(frame: &Frame, hook: Hook, stat: u32, ifindex: u32, len: u32) {
    let Some(mut entry) = reserve_event() else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `frame.ctx` is this program's context, of the kind `hook`
    // says; `e` points at a reserved, writable `Event`, every field of
    // which is written before submit (`data` up to `captured`).
    unsafe {
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).ifindex = ifindex;
        (*e).verdict = Verdict::Pass as u32;
        (*e).reason = EVENT_REASON_FLOW_REFUSED;
        (*e).slot = stat;
        (*e).len = len;
        (*e).captured = 0;
        let dst = (&raw mut (*e).data).cast::<core::ffi::c_void>();
        // The linear part only (what the frame window covers): the headers.
        // Two calls per hook with lengths the verifier can bound, as in
        // `emit_event`.
        // Hidden from LLVM, which would otherwise test it as two pointers
        // and fold the arithmetic below into `avail`, leaving the verifier
        // a length it cannot prove non-zero.
        let avail = crate::parse::opaque(&frame.len());
        if avail >= EVENT_SNAPLEN {
            let n = EVENT_SNAPLEN as u32;
            let rc = match hook {
                Hook::Xdp => bpf_xdp_load_bytes(frame.ctx.cast(), 0, dst, n),
                Hook::Tc => bpf_skb_load_bytes(frame.ctx, 0, dst, n),
            };
            if rc == 0 {
                (*e).captured = n;
            }
        } else if avail > 0 {
            let cap = (((avail as u32) - 1) & (EVENT_SNAPLEN as u32 - 1)) + 1;
            let rc = match hook {
                Hook::Xdp => bpf_xdp_load_bytes(frame.ctx.cast(), 0, dst, cap),
                Hook::Tc => bpf_skb_load_bytes(frame.ctx, 0, dst, cap),
            };
            if rc == 0 {
                (*e).captured = cap;
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
pub(crate) fn counter_verdict(counter: u32) -> u32 {
    ((counter - REASON_COUNTER_BASE) / PCLASS_COUNT) % VERDICT_COUNT
}

/// The per-CPU token bucket: credit grows with time up to one second's
/// worth, an event costs `EVENT_CONFIG.cost_ns`. False (and counted as
/// suppressed) when the event does not fit the budget.
#[inline(always)]
pub(crate) fn take_credit(budget: *mut EventBudget) -> bool {
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
