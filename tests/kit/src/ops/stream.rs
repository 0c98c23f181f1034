//! Sequence-numbered UDP streams that tell exactly which packets arrived.

use std::{
    collections::BTreeSet,
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Pair, ok, ok_any, poll};
use crate::netns::in_netns;

/// What a `Stream`'s receiver saw.
#[derive(Debug)]
pub struct Delivery {
    pub sent: u64,
    pub received: BTreeSet<u64>,
    pub duplicates: u64,
}

impl Delivery {
    /// The sequence numbers sent but not received (first 20).
    pub fn missing(&self) -> Vec<u64> {
        (0..self.sent)
            .filter(|s| !self.received.contains(s))
            .take(20)
            .collect()
    }

    pub fn lost(&self) -> u64 {
        self.sent - self.received.iter().filter(|s| **s < self.sent).count() as u64
    }
}

/// Sequence-numbered UDP datagrams from the client namespace to the server,
/// at a fixed rate, until `finish`. The receiver socket is bound in the server
/// namespace with a 4 MiB buffer so that it is never the thing that drops.
pub struct Stream {
    stop: Arc<AtomicBool>,
    received_count: Arc<AtomicU64>,
    sent_count: Arc<AtomicU64>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<(BTreeSet<u64>, u64)>>,
    rx_stop: Arc<AtomicBool>,
}

fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: a valid socket fd and a properly sized int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<i32>() as libc::socklen_t,
        );
    }
}

impl Stream {
    pub(super) fn start(pair: &Pair, port: u16, pps: u32) -> Stream {
        let to = SocketAddrV4::new(pair.server_ip, port);
        let rx = ok(
            "binding the receiver",
            ok_any(
                "setns into the server namespace",
                in_netns(&pair.server, || UdpSocket::bind(to)),
            ),
        );
        set_rcvbuf(&rx, 4 << 20);
        ok(
            "receiver timeout",
            rx.set_read_timeout(Some(Duration::from_millis(20))),
        );
        let from = pair.client_ip;
        let tx = ok(
            "binding the sender",
            ok_any(
                "setns into the client namespace",
                in_netns(&pair.client, || UdpSocket::bind((from, 0))),
            ),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let rx_stop = Arc::new(AtomicBool::new(false));
        let received_count = Arc::new(AtomicU64::new(0));
        let sent_count = Arc::new(AtomicU64::new(0));
        let receiver = {
            let (rx_stop, received_count) = (rx_stop.clone(), received_count.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                let mut dup = 0;
                let mut buf = [0u8; 2048];
                while !rx_stop.load(Ordering::SeqCst) {
                    if let Ok(n) = rx.recv(&mut buf)
                        && n >= 8
                    {
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&buf[..8]);
                        if seen.insert(u64::from_be_bytes(seq)) {
                            received_count.fetch_add(1, Ordering::SeqCst);
                        } else {
                            dup += 1;
                        }
                    }
                }
                (seen, dup)
            })
        };
        let sender = {
            let (stop, sent_count) = (stop.clone(), sent_count.clone());
            let period = Duration::from_secs(1) / pps;
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut seq: u64 = 0;
                let mut payload = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    let due = start + period * u32::try_from(seq).unwrap_or(u32::MAX);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    payload[..8].copy_from_slice(&seq.to_be_bytes());
                    if tx.send_to(&payload, to).is_ok() {
                        seq += 1;
                        sent_count.store(seq, Ordering::SeqCst);
                    }
                }
                seq
            })
        };
        Stream {
            stop,
            received_count,
            sent_count,
            sender: Some(sender),
            receiver: Some(receiver),
            rx_stop,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent_count.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> u64 {
        self.received_count.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` more datagrams than now have been received.
    pub fn wait_received_more(&self, n: u64, within: Duration) {
        let target = self.received() + n;
        if poll(within, || (self.received() >= target).then_some(())).is_none() {
            panic!(
                "the stream did not deliver {n} more datagrams within {within:?} (sent {}, received {})",
                self.sent(),
                self.received()
            );
        }
    }

    /// Waits until at least `n` more datagrams than now have been sent.
    pub fn wait_sent_more(&self, n: u64, within: Duration) {
        let target = self.sent() + n;
        if poll(within, || (self.sent() >= target).then_some(())).is_none() {
            panic!("the stream did not send {n} more datagrams within {within:?}");
        }
    }

    /// Stops sending; waits up to `drain` for stragglers; the result.
    pub fn finish(mut self, drain: Duration) -> Delivery {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .sender
            .take()
            .map(|h| h.join().expect("sender panicked"))
            .unwrap_or_default();
        let _ = poll(drain, || (self.received() >= sent).then_some(()));
        // A little longer, so that a packet that should not arrive can be seen.
        std::thread::sleep(Duration::from_millis(50));
        self.rx_stop.store(true, Ordering::SeqCst);
        let (received, duplicates) = self
            .receiver
            .take()
            .map(|h| h.join().expect("receiver panicked"))
            .unwrap_or_default();
        Delivery {
            sent,
            received,
            duplicates,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
    }
}
