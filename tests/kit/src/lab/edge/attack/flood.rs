//! Floods of spoofed frames, written by the kit's raw sender in batches:
//! TCP SYNs or UDP datagrams from many sources or from one, and first
//! fragments. Every source is a pure function of the frame's index, so the
//! distinct sources are known without keeping them.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::Wire;
use crate::{
    frames::{Ext, L4, Packet, TCP_SYN},
    lab::edge::Family,
};

/// IPv4 flood sources: 198.18.4.0 up to 198.19.255.255, all of the
/// benchmarking range 198.18.0.0/15 the labs do not use (they take
/// 198.18.0.0/22). 130,048 addresses: the most the test address range
/// allows, so a flood of more sources than that reuses each address with
/// other ports.
const V4_FIRST: u32 = u32::from_be_bytes([198, 18, 4, 0]);
pub const V4_SOURCES: u32 = (1 << 17) - 1024;
/// IPv6 flood sources: one /64 each, in 2001:db8:8000::/33 (the labs use
/// 2001:db8:0-ff::).
const V6_TOP: u16 = 0x8000;
/// The single source of the one-source floods: outside both the labs'
/// subnets and the many-source ranges.
pub(super) const ONE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 3);
pub(super) const ONE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 3);

/// Whose frames: many distinct sources, or one with random ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sources {
    Many,
    One,
}

/// What each frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Syn,
    Udp,
    /// The first fragment of a UDP datagram that never completes.
    FirstFragment,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Flood {
    pub family: Family,
    pub sources: Sources,
    pub kind: Kind,
    pub to: SocketAddr,
    pub frames: u64,
    /// Frames per second at most; `None`: as fast as the kernel takes them.
    pub pace: Option<u32>,
}

/// splitmix64: the flood's "random" fields, reproducible from the index.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Flood {
    /// The source of frame `i`. Many sources: IPv4 walks the range, then
    /// walks it again with ports from another half, so that no (address,
    /// port) repeats; IPv6 takes a /64 per frame. One source: random ports.
    pub fn source(&self, i: u64) -> (IpAddr, u16) {
        let r = mix(i);
        match (self.sources, self.family) {
            (Sources::One, Family::V4) => (IpAddr::V4(ONE_V4), 1024 + (r % 64_512) as u16),
            (Sources::One, Family::V6) => (IpAddr::V6(ONE_V6), 1024 + (r % 64_512) as u16),
            (Sources::Many, Family::V4) => {
                let round = i / u64::from(V4_SOURCES);
                let addr = V4_FIRST + (i % u64::from(V4_SOURCES)) as u32;
                // Rounds take disjoint port ranges of 2,048.
                let port = 1024 + (round % 31) as u16 * 2048 + (r % 2048) as u16;
                (IpAddr::V4(Ipv4Addr::from(addr)), port)
            }
            (Sources::Many, Family::V6) => {
                let addr = Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    V6_TOP | ((i >> 16) as u16 & 0x7fff),
                    i as u16,
                    (r >> 48) as u16,
                    (r >> 32) as u16,
                    (r >> 16) as u16,
                    r as u16 | 1,
                );
                (IpAddr::V6(addr), 1024 + (r % 64_512) as u16)
            }
        }
    }

    fn frame(&self, wire: &Wire, i: u64) -> Vec<u8> {
        let (src, sport) = self.source(i);
        let (dst, dport) = (self.to.ip(), self.to.port());
        match self.kind {
            Kind::Syn => wire.frame(Packet::new(
                src,
                dst,
                L4::Tcp {
                    sport,
                    dport,
                    flags: TCP_SYN,
                },
            )),
            Kind::Udp => wire.frame(Packet::new(src, dst, L4::Udp { sport, dport }).payload(16)),
            Kind::FirstFragment => {
                let id = mix(i ^ 0xf7a6) as u32;
                let mut p = Packet::new(src, dst, L4::Udp { sport, dport }).payload(16);
                if self.family == Family::V4 {
                    p.ipv4_frag = Some((0, true, id as u16));
                } else {
                    p = p.ext(Ext::Fragment {
                        offset: 0,
                        more: true,
                        id,
                    });
                }
                wire.frame(p)
            }
        }
    }

    /// (distinct source addresses, distinct source address and port pairs).
    pub fn distinct(&self) -> (u64, u64) {
        let mut addrs = HashSet::new();
        let mut endpoints = HashSet::new();
        for i in 0..self.frames {
            let (a, p) = self.source(i);
            addrs.insert(a);
            endpoints.insert((a, p));
        }
        (addrs.len() as u64, endpoints.len() as u64)
    }
}

/// A flood on its way: how far it got, and its end.
pub(super) struct Running {
    pub sent: Arc<AtomicU64>,
    pub done: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Duration>>>,
    pub total: u64,
}

impl Running {
    /// Whether at least `part` of the flood has been sent (or it ended).
    pub fn reached(&self, part: f64) -> bool {
        self.done.load(Ordering::SeqCst)
            || self.sent.load(Ordering::SeqCst) as f64 >= part * self.total as f64
    }

    pub fn running(&self) -> bool {
        !self.done.load(Ordering::SeqCst)
    }

    /// Waits for `reached(part)`, at most `within`.
    pub fn wait_for(&self, part: f64, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.reached(part) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the end; how long the sending took.
    pub fn finish(mut self) -> Result<Duration> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("the flood's sender panicked"),
            None => anyhow::bail!("the flood was already finished"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frames built and handed to the kernel per round.
const CHUNK: u64 = 4096;

/// Starts `flood` on a thread of its own.
pub(super) fn start(wire: Arc<Wire>, flood: Flood) -> Running {
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let (sent, done) = (sent.clone(), done.clone());
        std::thread::spawn(move || -> Result<Duration> {
            let began = Instant::now();
            let mut i = 0;
            // A paced flood goes in small rounds, each when it is due.
            let chunk = if flood.pace.is_some() { 64 } else { CHUNK };
            let result = (|| -> Result<()> {
                while i < flood.frames {
                    if let Some(fps) = flood.pace {
                        let due = began + Duration::from_secs_f64(i as f64 / f64::from(fps));
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let end = (i + chunk).min(flood.frames);
                    let frames: Vec<Vec<u8>> = (i..end).map(|j| flood.frame(&wire, j)).collect();
                    wire.send(&frames)?;
                    i = end;
                    sent.store(i, Ordering::SeqCst);
                }
                Ok(())
            })();
            done.store(true, Ordering::SeqCst);
            result.map(|()| began.elapsed())
        })
    };
    Running {
        sent,
        done,
        thread: Some(thread),
        total: flood.frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flood(family: Family, sources: Sources, frames: u64) -> Flood {
        Flood {
            family,
            sources,
            kind: Kind::Syn,
            to: SocketAddr::from(([198, 18, 2, 10], 5061)),
            frames,
            pace: None,
        }
    }

    #[test]
    fn many_source_floods_never_repeat_a_source() {
        let v4 = flood(Family::V4, Sources::Many, 260_096);
        assert_eq!(
            v4.distinct(),
            (u64::from(V4_SOURCES), 260_096),
            "IPv4: every address of the range, twice, never the same port twice"
        );
        let v6 = flood(Family::V6, Sources::Many, 20_000);
        assert_eq!(v6.distinct(), (20_000, 20_000));
    }

    #[test]
    fn flood_sources_stay_out_of_the_labs_subnets_and_in_the_test_ranges() {
        let v4 = flood(Family::V4, Sources::Many, 260_096);
        for i in [0, 1, 130_047, 130_048, 260_095] {
            let (IpAddr::V4(a), _) = v4.source(i) else {
                panic!("an IPv4 flood made a non-IPv4 source");
            };
            let o = a.octets();
            assert!(
                o[0] == 198 && (o[1] == 18 && o[2] >= 4 || o[1] == 19),
                "{a} is a lab address or outside 198.18.0.0/15"
            );
        }
        let v6 = flood(Family::V6, Sources::Many, 300_000);
        for i in [0, 65_536, 299_999] {
            let (IpAddr::V6(a), _) = v6.source(i) else {
                panic!("an IPv6 flood made a non-IPv6 source");
            };
            let s = a.segments();
            assert!(
                s[0] == 0x2001 && s[1] == 0xdb8 && s[2] >= 0x8000,
                "{a} is outside 2001:db8:8000::/33"
            );
        }
        let one = flood(Family::V4, Sources::One, 1000);
        assert_eq!(one.distinct().0, 1, "one source");
        assert!(one.distinct().1 > 900, "with random ports");
    }
}
