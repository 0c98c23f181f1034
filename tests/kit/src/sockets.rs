//! Listeners that count what reaches them, for checking delivery through
//! portguard. Create them inside `netns::in_netns` so that the socket lives
//! in that namespace: the socket keeps its namespace, so the counting thread
//! (spawned from there anyway) can run anywhere.

use std::{
    io::{self, Read as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// How often a counting thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How long one accepted TCP connection may stay silent before it is closed.
const TCP_IDLE: Duration = Duration::from_millis(500);

/// A bound socket counting UDP datagrams, or TCP connections that carried
/// data, on a thread of its own until `finish`.
#[derive(Debug)]
pub struct Counter {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU32>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// What a `Counter` saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// UDP: datagrams. TCP: accepted connections on which at least one byte arrived.
    pub count: u32,
    /// Payload bytes.
    pub bytes: u64,
}

impl Counter {
    /// Binds a UDP socket at `addr` (in the calling thread's namespace).
    pub fn udp(addr: SocketAddr) -> io::Result<Counter> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(POLL))?;
        let local = sock.local_addr()?;
        Ok(Counter::spawn(local, move |stop, count, bytes| {
            let mut buf = [0u8; 65_536];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::SeqCst);
                    bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }))
    }

    /// Binds a TCP listener at `addr` (in the calling thread's namespace).
    pub fn tcp(addr: SocketAddr) -> io::Result<Counter> {
        let sock = TcpListener::bind(addr)?;
        // Non-blocking accept so that the stop flag is seen.
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        Ok(Counter::spawn(local, move |stop, count, bytes| {
            while !stop.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = sock.accept() else {
                    std::thread::sleep(POLL);
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(TCP_IDLE));
                let mut buf = [0u8; 4096];
                let mut got = 0u64;
                // Until EOF, silence, or an error: the senders close after writing.
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    got += n as u64;
                }
                if got > 0 {
                    count.fetch_add(1, Ordering::SeqCst);
                    bytes.fetch_add(got, Ordering::SeqCst);
                }
            }
        }))
    }

    fn spawn(
        local: SocketAddr,
        body: impl FnOnce(&AtomicBool, &AtomicU32, &AtomicU64) + Send + 'static,
    ) -> Counter {
        let (stop, count, bytes) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let thread = {
            let (stop, count, bytes) = (stop.clone(), count.clone(), bytes.clone());
            std::thread::spawn(move || body(&stop, &count, &bytes))
        };
        Counter {
            local,
            stop,
            count,
            bytes,
            thread: Some(thread),
        }
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What has been counted so far.
    pub fn counts(&self) -> Counts {
        Counts {
            count: self.count.load(Ordering::SeqCst),
            bytes: self.bytes.load(Ordering::SeqCst),
        }
    }

    /// Stops counting, closes the socket and returns the totals.
    pub fn finish(mut self) -> Counts {
        self.halt();
        self.counts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sends raw Ethernet frames out of one interface of a namespace (AF_PACKET):
/// for frames the kernel's own stack would not build (VLAN tags, crafted
/// headers). The socket is opened inside the namespace and keeps it.
pub struct RawSender {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSender {
    pub fn new(ns: &crate::netns::NetNs, ifname: &str) -> anyhow::Result<RawSender> {
        use std::os::fd::FromRawFd as _;
        let name = std::ffi::CString::new(ifname)?;
        let (fd, ifindex) = crate::netns::in_netns(ns, move || {
            // SAFETY: plain libc calls with valid arguments.
            unsafe {
                (
                    libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
                    libc::if_nametoindex(name.as_ptr()) as i32,
                )
            }
        })?;
        if fd < 0 {
            anyhow::bail!(
                "AF_PACKET socket in {}: {}",
                ns.name(),
                io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is a socket this process just opened and owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        if ifindex <= 0 {
            anyhow::bail!("no interface {ifname} in {}", ns.name());
        }
        Ok(RawSender { fd, ifindex })
    }

    /// Sends one frame (its first six bytes are the destination MAC).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        if frame.len() < 14 {
            return Err(io::Error::other(
                "a frame needs at least an Ethernet header",
            ));
        }
        // SAFETY: sockaddr_ll is zeroed and filled; the frame outlives the call.
        let n = unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n == frame.len() as isize {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, net::TcpStream};

    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn udp_counter_counts_datagrams_and_bytes() {
        let c = Counter::udp(loopback()).unwrap_or_else(|e| panic!("{e}"));
        let tx = UdpSocket::bind(loopback()).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..5 {
            tx.send_to(b"abc", c.local_addr())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while c.counts().count < 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            c.finish(),
            Counts {
                count: 5,
                bytes: 15
            }
        );
    }

    #[test]
    fn tcp_counter_counts_connections_that_carried_data() {
        let c = Counter::tcp(loopback()).unwrap_or_else(|e| panic!("{e}"));
        {
            let mut s = TcpStream::connect(c.local_addr()).unwrap_or_else(|e| panic!("{e}"));
            s.write_all(b"one\ntwo\n").unwrap_or_else(|e| panic!("{e}"));
        }
        // A connection that sends nothing is not counted.
        drop(TcpStream::connect(c.local_addr()).unwrap_or_else(|e| panic!("{e}")));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while c.counts().count < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(c.finish(), Counts { count: 1, bytes: 8 });
    }
}
