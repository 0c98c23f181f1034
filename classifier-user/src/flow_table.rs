//! The flow and fragment tables seen from userspace: the sweeper that
//! removes idle entries, and their fill, evictions and refusals for
//! metrics and `stats`.
//!
//! The packet path never reads a clock to expire an entry; it notes when it
//! last saw one (`FlowState::seen`, coarse-clock seconds), and the daemon
//! sweeps the tables every few seconds, deleting entries idle past their
//! protocol's timeout (`classifier_common::flow_timeout_s`). A sweep walks
//! the tables with `BPF_MAP_LOOKUP_BATCH` (a few syscalls for a quarter of a
//! million entries, where a key-by-key walk takes two per entry) and so
//! also counts them.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    path::Path,
};

use aya::maps::MapData;
use bytemuck::{Pod, Zeroable};
use classifier_common::{
    FLOW_STAT_ENTRIES, FlowKey, FlowState, FragKey, FragVerdict, STAT_CONFIRMED_EXPIRED,
    STAT_CONFIRMED_REFUSED, STAT_FRAGMENT_INSERTS, STAT_FRAGMENT_REFUSED, STAT_NEW_EXPIRED,
    STAT_NEW_INSERTS, STAT_NEW_REFUSED, STAT_PROMOTED, flow_timeout_s, map_names,
};

/// One table's (or one kind's) figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableFigures {
    pub entries: u64,
    pub capacity: u64,
    /// Entries the table pushed out to make room (an LRU's silent evictions,
    /// derived from what went in and what left otherwise).
    pub evictions: u64,
    /// Entries not made: a source's share spent, or the table full.
    pub refusals: u64,
}

/// Every table, as the metrics and `stats` show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFigures {
    pub(crate) confirmed: TableFigures,
    pub(crate) unconfirmed: TableFigures,
    pub(crate) fragments: TableFigures,
}

impl FlowFigures {
    /// (table, kind, figures) rows, in the order metrics and `stats` list them.
    pub fn rows(&self) -> [(&'static str, Option<&'static str>, TableFigures); 3] {
        [
            ("flows", Some("confirmed"), self.confirmed),
            ("flows", Some("unconfirmed"), self.unconfirmed),
            ("fragments", None, self.fragments),
        ]
    }
}

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub(crate) confirmed: u64,
    pub(crate) unconfirmed: u64,
}

/// The tables of one instance, by descriptor (the daemon's loaded maps, or
/// another process's pins for `stats`).
pub(crate) struct FlowTables<'a> {
    pub(crate) flows: BorrowedFd<'a>,
    pub(crate) flows_new: BorrowedFd<'a>,
    pub(crate) fragments: BorrowedFd<'a>,
    /// `FLOW_STATS`, a per-CPU array of u64.
    pub(crate) stats: BorrowedFd<'a>,
    pub(crate) capacity: [u64; 3],
}

impl FlowTables<'_> {
    /// Removes the entries idle past their timeout at `now` (coarse-clock
    /// seconds) and counts what is left; `sweep` false only counts.
    pub(crate) fn figures(&self, now: u32, sweep: bool) -> io::Result<(FlowFigures, Swept)> {
        let mut swept = Swept::default();
        let mut expired = Vec::new();
        let mut confirmed = 0u64;
        for_each::<FlowKey, FlowState>(self.flows, |k, v| {
            if sweep && idle(k, v, now, true) {
                expired.push(*k);
            } else {
                confirmed += 1;
            }
        })?;
        swept.confirmed = delete(self.flows, &expired)?;
        expired.clear();
        let mut unconfirmed = 0u64;
        for_each::<FlowKey, FlowState>(self.flows_new, |k, v| {
            if sweep && idle(k, v, now, false) {
                expired.push(*k);
            } else {
                unconfirmed += 1;
            }
        })?;
        swept.unconfirmed = delete(self.flows_new, &expired)?;
        let mut fragments = 0u64;
        for_each::<FragKey, FragVerdict>(self.fragments, |_, _| fragments += 1)?;
        if swept.confirmed + swept.unconfirmed > 0 {
            self.add_expired(swept)?;
        }

        let s = self.stats_sum()?;
        let stat = |i: u32| s[i as usize];
        let figures = FlowFigures {
            confirmed: TableFigures {
                entries: confirmed,
                capacity: self.capacity[0],
                // A hash: nothing is pushed out; a full one refuses.
                evictions: 0,
                refusals: stat(STAT_CONFIRMED_REFUSED),
            },
            unconfirmed: TableFigures {
                entries: unconfirmed,
                capacity: self.capacity[1],
                evictions: stat(STAT_NEW_INSERTS)
                    .saturating_sub(unconfirmed + stat(STAT_PROMOTED) + stat(STAT_NEW_EXPIRED)),
                refusals: stat(STAT_NEW_REFUSED),
            },
            fragments: TableFigures {
                entries: fragments,
                capacity: self.capacity[2],
                evictions: stat(STAT_FRAGMENT_INSERTS).saturating_sub(fragments),
                refusals: stat(STAT_FRAGMENT_REFUSED),
            },
        };
        Ok((figures, swept))
    }

    /// `FLOW_STATS` summed over CPUs.
    fn stats_sum(&self) -> io::Result<[u64; FLOW_STAT_ENTRIES as usize]> {
        let mut sum = [0u64; FLOW_STAT_ENTRIES as usize];
        for (i, total) in sum.iter_mut().enumerate() {
            *total = percpu(self.stats, i as u32)?.iter().sum();
        }
        Ok(sum)
    }

    /// The sweeper's deletions, kept with the packet path's counts (in the
    /// first CPU's slots) so that any reader can tell evictions from
    /// expiries, across daemon restarts.
    fn add_expired(&self, swept: Swept) -> io::Result<()> {
        for (index, n) in [
            (STAT_CONFIRMED_EXPIRED, swept.confirmed),
            (STAT_NEW_EXPIRED, swept.unconfirmed),
        ] {
            let mut values = percpu(self.stats, index)?;
            values[0] += n;
            let mut attr = ElemAttr {
                map_fd: self.stats.as_raw_fd() as u32,
                pad: 0,
                key: (&raw const index) as u64,
                value: values.as_mut_ptr() as u64,
                flags: 0,
            };
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr)?;
        }
        Ok(())
    }
}

/// One entry of a per-CPU array of u64, a value per possible CPU.
fn percpu(fd: BorrowedFd<'_>, index: u32) -> io::Result<Vec<u64>> {
    let cpus =
        aya::util::nr_cpus().map_err(|(what, e)| io::Error::other(format!("{what}: {e}")))?;
    let mut values = vec![0u64; cpus];
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        pad: 0,
        key: (&raw const index) as u64,
        value: values.as_mut_ptr() as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)
        .map_err(|e| io::Error::other(format!("{}[{index}]: {e}", map_names::FLOW_STATS)))?;
    Ok(values)
}

/// Whether an entry has been idle past its timeout.
fn idle(k: &FlowKey, v: &FlowState, now: u32, confirmed: bool) -> bool {
    now.wrapping_sub(v.seen) as i32 > flow_timeout_s(k.proto, v.flags, confirmed) as i32
}

/// The coarse monotonic clock in seconds: the clock the packet path stamps
/// entries with (`bpf_ktime_get_coarse_ns`).
pub(crate) fn now_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

/// The figures of an instance from its pins (`stats`), without sweeping:
/// the daemon does that.
pub fn figures_from_pins(dir: &Path) -> io::Result<FlowFigures> {
    let open = |name: &str| {
        MapData::from_pin(dir.join(name))
            .map_err(|e| io::Error::other(format!("{}: {e}", dir.join(name).display())))
    };
    let flows = open(map_names::FLOWS)?;
    let flows_new = open(map_names::FLOWS_NEW)?;
    let fragments = open(map_names::FRAGMENTS)?;
    let stats = open(map_names::FLOW_STATS)?;
    let capacity = |m: &MapData| m.info().map_or(0, |i| u64::from(i.max_entries()));
    use std::os::fd::AsFd as _;
    let tables = FlowTables {
        flows: flows.fd().as_fd(),
        flows_new: flows_new.fd().as_fd(),
        fragments: fragments.fd().as_fd(),
        stats: stats.fd().as_fd(),
        capacity: [capacity(&flows), capacity(&flows_new), capacity(&fragments)],
    };
    Ok(tables.figures(now_s(), false)?.0)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per batch: 40-byte keys and 16-byte values, 224 KiB a batch.
const BATCH: usize = 4_096;

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `bpf(2)`. `attr` is mutable: the batch commands write back the count.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a `union bpf_attr` member for `cmd`, its pointers
    // point at buffers that outlive the call, and its size is passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `f` on every entry of a hash map, a batch at a time. Entries the
/// packet path adds or removes meanwhile may be seen or not, as with any
/// walk of a live table.
fn for_each<K: Pod + Zeroable, V: Pod + Zeroable>(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut keys = vec![K::zeroed(); BATCH];
    let mut values = vec![V::zeroed(); BATCH];
    // A hash map's batch token is a bucket index (u32); 8 bytes are room.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw mut token_in) as u64 },
            out_batch: (&raw mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel writes back how many it filled, on success and at the end.
        let n = (attr.count as usize).min(BATCH);
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                for i in 0..n {
                    f(&keys[i], &values[i]);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        for i in 0..n {
            f(&keys[i], &values[i]);
        }
        token_in = token_out;
        first = false;
    }
}

/// Deletes `keys` (missing ones are not an error: the LRU or a racing
/// confirmation may have taken them). Returns how many went.
fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<u64> {
    let mut gone = 0;
    for chunk in keys.chunks(BATCH) {
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: chunk.as_ptr() as u64,
            values: 0,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => gone += u64::from(attr.count),
            // A key already gone stops the batch there: delete the rest one
            // by one.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                gone += u64::from(attr.count);
                for k in &chunk[(attr.count as usize).min(chunk.len())..] {
                    let mut attr = ElemAttr {
                        map_fd: fd.as_raw_fd() as u32,
                        pad: 0,
                        key: (k as *const K) as u64,
                        value: 0,
                        flags: 0,
                    };
                    if bpf(BPF_MAP_DELETE_ELEM, &mut attr).is_ok() {
                        gone += 1;
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(gone)
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

#[cfg(test)]
mod tests {
    use classifier_common::{FLOW_CLOSING, FLOW_TCP_CONFIRMED_S, FLOW_UDP_UNCONFIRMED_S};

    use super::*;

    fn key(proto: u8) -> FlowKey {
        FlowKey {
            proto,
            ..FlowKey::default()
        }
    }

    fn state(seen: u32, flags: u32) -> FlowState {
        FlowState {
            seen,
            flags,
            ..FlowState::default()
        }
    }

    #[test]
    fn entries_expire_after_their_protocols_timeout_and_not_before() {
        let now = 100_000;
        let tcp = key(6);
        let fresh = state(now - FLOW_TCP_CONFIRMED_S, 0);
        assert!(!idle(&tcp, &fresh, now, true), "exactly at the timeout");
        let stale = state(now - FLOW_TCP_CONFIRMED_S - 1, 0);
        assert!(idle(&tcp, &stale, now, true), "one second past it");
        let udp = key(17);
        assert!(idle(
            &udp,
            &state(now - FLOW_UDP_UNCONFIRMED_S - 1, 0),
            now,
            false
        ));
        assert!(
            idle(&tcp, &state(now - 11, FLOW_CLOSING), now, true),
            "a closed connection goes after 10 s"
        );
    }

    #[test]
    fn an_entry_seen_after_the_sweep_read_the_clock_is_not_idle() {
        // The packet path may stamp an entry a moment after the sweeper read
        // `now`: it is fresh, not 2^32 seconds old.
        let now = 5_000;
        assert!(!idle(&key(6), &state(now + 1, 0), now, false));
    }
}
