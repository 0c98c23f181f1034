//! Listeners that count what reaches them, for checking delivery through
//! portguard. Create them inside `netns::in_netns` so that the socket lives
//! in that namespace: the socket keeps its namespace, so the counting thread
//! (spawned from there anyway) can run anywhere.

use std::{
    collections::BTreeMap,
    io::{self, Read as _},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
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
/// data, on a thread of its own until `finish`; also per source address,
/// so that one listener can serve senders that must be told apart.
#[derive(Debug)]
pub struct Counter {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU32>,
    bytes: Arc<AtomicU64>,
    sources: Arc<Mutex<BTreeMap<IpAddr, u32>>>,
    thread: Option<JoinHandle<()>>,
}

/// What a counting thread updates: the totals and the per-source counts.
struct Tally {
    count: Arc<AtomicU32>,
    bytes: Arc<AtomicU64>,
    sources: Arc<Mutex<BTreeMap<IpAddr, u32>>>,
}

impl Tally {
    fn add(&self, from: IpAddr, bytes: u64) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
        if let Ok(mut m) = self.sources.lock() {
            *m.entry(from).or_default() += 1;
        }
    }
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
        Ok(Counter::spawn(local, move |stop, tally| {
            let mut buf = [0u8; 65_536];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    tally.add(from.ip(), n as u64);
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
        Ok(Counter::spawn(local, move |stop, tally| {
            while !stop.load(Ordering::SeqCst) {
                let Ok((mut conn, peer)) = sock.accept() else {
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
                    tally.add(peer.ip(), got);
                }
            }
        }))
    }

    fn spawn(
        local: SocketAddr,
        body: impl FnOnce(&AtomicBool, &Tally) + Send + 'static,
    ) -> Counter {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Tally {
            count: Arc::new(AtomicU32::new(0)),
            bytes: Arc::new(AtomicU64::new(0)),
            sources: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let (count, bytes, sources) = (
            tally.count.clone(),
            tally.bytes.clone(),
            tally.sources.clone(),
        );
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || body(&stop, &tally))
        };
        Counter {
            local,
            stop,
            count,
            bytes,
            sources,
            thread: Some(thread),
        }
    }

    /// What has been counted so far from `source` (UDP: datagrams; TCP:
    /// connections that carried data).
    pub fn count_from(&self, source: IpAddr) -> u32 {
        self.sources
            .lock()
            .map_or(0, |m| m.get(&source).copied().unwrap_or(0))
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

    /// Stops counting and closes the socket; what was counted stays
    /// readable (per source too).
    pub fn stop(&mut self) {
        self.halt();
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

/// An AF_PACKET socket of `protocol` (network byte order; 0: send only)
/// opened in `ns`, and the index of `ifname` there.
fn packet_socket(
    ns: &crate::netns::NetNs,
    ifname: &str,
    protocol: u16,
) -> anyhow::Result<(std::os::fd::OwnedFd, i32)> {
    use std::os::fd::FromRawFd as _;
    let name = std::ffi::CString::new(ifname)?;
    let (fd, ifindex) = crate::netns::in_netns(ns, move || {
        // SAFETY: plain libc calls with valid arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        // errno is the thread's: read it on the thread that made the call.
        let fd = if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(fd)
        };
        // SAFETY: a NUL-terminated name.
        (fd, unsafe { libc::if_nametoindex(name.as_ptr()) } as i32)
    })?;
    let fd = fd.map_err(|e| anyhow::anyhow!("AF_PACKET socket in {}: {e}", ns.name()))?;
    // SAFETY: `fd` is a socket this process just opened and owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    if ifindex <= 0 {
        anyhow::bail!("no interface {ifname} in {}", ns.name());
    }
    Ok((fd, ifindex))
}

impl RawSender {
    pub fn new(ns: &crate::netns::NetNs, ifname: &str) -> anyhow::Result<RawSender> {
        let (fd, ifindex) = packet_socket(ns, ifname, 0)?;
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

    /// Sends every frame of `frames`, up to [`BATCH`] per `sendmmsg` call (a
    /// flood's frames cost one system call per batch, not one each). A full
    /// device queue (`ENOBUFS`, `EAGAIN`) is waited out and the rest sent,
    /// so every frame leaves, unless the queue stays full for 10 s; any
    /// other error stops the batch.
    pub fn send_batch(&self, frames: &[Vec<u8>]) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: zeroed sockaddr_ll is valid; filled below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        let mut done = 0;
        let mut progress = std::time::Instant::now();
        while done < frames.len() {
            let chunk = &frames[done..(done + BATCH).min(frames.len())];
            let mut iovs: Vec<libc::iovec> = chunk
                .iter()
                .map(|f| libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: a zeroed msghdr is valid; its pointers are set
                    // to `addr` and `iov`, which outlive the call.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_name = (&raw mut addr).cast();
                    m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
                    m.msg_hdr.msg_iov = iov;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            // SAFETY: `msgs` holds `msgs.len()` valid headers whose buffers
            // live until the call returns.
            let n = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                        if progress.elapsed() < Duration::from_secs(10) =>
                    {
                        std::thread::yield_now();
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            done += n as usize;
            progress = std::time::Instant::now();
        }
        Ok(())
    }
}

/// Frames per `sendmmsg` call in [`RawSender::send_batch`].
pub const BATCH: usize = 256;

/// What a [`Capture`] read off a frame: addresses, protocol, ports (0
/// where the protocol has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Seen {
    /// The IP packet of an Ethernet frame (under at most two VLAN tags):
    /// `None` for anything else.
    pub fn parse(frame: &[u8]) -> Option<Seen> {
        let be16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
        };
        let mut off = 12;
        let mut ethertype = be16(off)?;
        for _ in 0..2 {
            if ethertype != 0x8100 && ethertype != 0x88a8 {
                break;
            }
            off += 4;
            ethertype = be16(off)?;
        }
        let ip = off + 2;
        let (src, dst, proto, l4) = match ethertype {
            0x0800 => {
                let h = frame.get(ip..ip + 20)?;
                let ihl = usize::from(h[0] & 0x0f) * 4;
                let later_fragment = be16(ip + 6)? & 0x1fff != 0;
                let src = IpAddr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?);
                let dst = IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?);
                let l4 = (!later_fragment).then_some(ip + ihl);
                (src, dst, h[9], l4)
            }
            0x86dd => {
                let h = frame.get(ip..ip + 40)?;
                let src = IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?);
                let dst = IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?);
                (src, dst, h[6], Some(ip + 40))
            }
            _ => return None,
        };
        let (sport, dport) = match (proto, l4) {
            (6 | 17, Some(at)) => (be16(at).unwrap_or(0), be16(at + 2).unwrap_or(0)),
            _ => (0, 0),
        };
        Some(Seen {
            src,
            dst,
            proto,
            sport,
            dport,
        })
    }
}

/// Every IP frame that arrives on one interface of a namespace (AF_PACKET,
/// not what the interface sends), counted by addresses, protocol and ports
/// on a thread of its own until dropped: proof that a packet did or did not
/// get this far, whether or not a socket would have taken it. A tap sees a
/// frame after any XDP program on that interface has passed it.
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<Seen, u32>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &crate::netns::NetNs, ifname: &str) -> anyhow::Result<Capture> {
        use std::os::fd::AsRawFd as _;
        let (fd, ifindex) = packet_socket(ns, ifname, (libc::ETH_P_ALL as u16).to_be())?;
        // SAFETY: sockaddr_ll is zeroed and filled; the timeout is a valid timeval.
        let bound = unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = ifindex;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound != 0 {
            anyhow::bail!(
                "binding the capture to {ifname} in {}: {}",
                ns.name(),
                io::Error::last_os_error()
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::SeqCst) {
                    // SAFETY: `buf` and `from` are valid for the sizes given.
                    let (n, pkttype) = unsafe {
                        let mut from: libc::sockaddr_ll = std::mem::zeroed();
                        let mut len = size_of::<libc::sockaddr_ll>() as u32;
                        let n = libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&raw mut from).cast(),
                            &mut len,
                        );
                        (n, from.sll_pkttype)
                    };
                    if n <= 0 || pkttype == libc::PACKET_OUTGOING {
                        continue;
                    }
                    if let Some(s) = Seen::parse(&buf[..n as usize])
                        && let Ok(mut m) = seen.lock()
                    {
                        *m.entry(s).or_default() += 1;
                    }
                }
            })
        };
        Ok(Capture {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// Frames seen so far that `pred` picks.
    pub fn count(&self, pred: impl Fn(&Seen) -> bool) -> u32 {
        self.seen.lock().map_or(0, |m| {
            m.iter().filter(|(s, _)| pred(s)).map(|(_, n)| *n).sum()
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection attempt from a chosen local address and port (which
/// `TcpStream::connect` cannot do): the attacker's real connect from the
/// port a planted flow would answer. `SO_REUSEADDR`, so that a port in
/// TIME_WAIT from an earlier attempt can be used again.
pub fn connect_from(
    local: SocketAddr,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a plain socket call.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket this process just opened and owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: a valid option value of its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    let (local, local_len) = sockaddr(local);
    // SAFETY: `local` is a sockaddr of `local_len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), local_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (peer, peer_len) = sockaddr(to);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const peer).cast(), peer_len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return Err(io::Error::from(io::ErrorKind::TimedOut)),
            n if n < 0 => return Err(io::Error::last_os_error()),
            _ => {}
        }
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as u32;
        // SAFETY: a valid buffer for SO_ERROR.
        unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            )
        };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A `sockaddr_storage` holding `a`, and its length.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: a zeroed sockaddr_storage is valid, and large enough for
    // either family's address written into it.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (ss, size_of::<libc::sockaddr_in>() as u32)
            }
            SocketAddr::V6(v6) => {
                let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr.s6_addr = v6.ip().octets();
                (*sin6).sin6_scope_id = v6.scope_id();
                (ss, size_of::<libc::sockaddr_in6>() as u32)
            }
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

    /// A UDP counter on loopback that has counted `n` datagrams of
    /// `payload` from one loopback socket (or waited 2 s for them).
    fn udp_counter_fed(n: u32, payload: &[u8]) -> Counter {
        let c = Counter::udp(loopback()).expect("a UDP counter on loopback");
        let tx = UdpSocket::bind(loopback()).expect("a UDP socket on loopback");
        for _ in 0..n {
            tx.send_to(payload, c.local_addr())
                .expect("a datagram to the counter");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while c.counts().count < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        c
    }

    #[test]
    fn udp_counter_counts_datagrams_and_bytes() {
        let c = udp_counter_fed(5, b"abc");
        assert_eq!(
            c.finish(),
            Counts {
                count: 5,
                bytes: 15
            }
        );
    }

    #[test]
    fn a_counter_tells_its_sources_apart() {
        let c = udp_counter_fed(3, b"x");
        assert_eq!(c.count_from(IpAddr::from([127, 0, 0, 1])), 3);
        assert_eq!(c.count_from(IpAddr::from([127, 0, 0, 2])), 0);
    }

    #[test]
    fn connect_from_uses_the_port_it_is_given_and_again_after_a_close() {
        let listener = TcpListener::bind(loopback()).expect("a TCP listener on loopback");
        let to = listener.local_addr().expect("the listener's address");
        // A port of our own: the one a bound socket got, freed again.
        let from = UdpSocket::bind(loopback())
            .and_then(|s| s.local_addr())
            .expect("a free port on loopback");
        for _ in 0..2 {
            let conn = connect_from(from, to, Duration::from_secs(1))
                .unwrap_or_else(|e| panic!("connect_from {from}: {e}"));
            let (_, peer) = listener.accept().expect("the connection accepted");
            assert_eq!(peer, from, "the connection comes from the chosen port");
            drop(conn);
        }
        let closed = UdpSocket::bind(loopback())
            .and_then(|s| s.local_addr())
            .expect("a free port on loopback");
        let err = connect_from(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            closed,
            Duration::from_secs(1),
        )
        .err()
        .map(|e| e.kind());
        assert_eq!(
            err,
            Some(io::ErrorKind::ConnectionRefused),
            "a TCP port nothing listens on refuses"
        );
    }

    #[test]
    fn seen_reads_addresses_and_ports_under_vlan_tags_and_not_in_later_fragments() {
        use crate::frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, Packet};
        let udp = Packet::udp("198.18.1.2", "198.18.2.10", 53, 161).payload(4);
        assert_eq!(
            Seen::parse(&udp.build()),
            Some(Seen {
                src: IpAddr::from([198, 18, 1, 2]),
                dst: IpAddr::from([198, 18, 2, 10]),
                proto: 17,
                sport: 53,
                dport: 161
            })
        );
        let qinq = Packet::tcp("2001:db8:1::2", "2001:db8:2::10", 5061, 22)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 200);
        let seen = Seen::parse(&qinq.build()).expect("QinQ not read");
        assert_eq!((seen.proto, seen.sport, seen.dport), (6, 5061, 22));
        let mut later = Packet::udp("198.18.1.2", "198.18.2.12", 1, 3478).payload(8);
        later.ipv4_frag = Some((100, false, 7));
        let seen = Seen::parse(&later.build()).expect("fragment not read");
        assert_eq!(
            (seen.sport, seen.dport),
            (0, 0),
            "a later fragment has no ports"
        );
        let first6 = Packet::udp("2001:db8:1::2", "2001:db8:2::12", 1, 3478).ext(Ext::Fragment {
            offset: 0,
            more: true,
            id: 1,
        });
        assert_eq!(
            Seen::parse(&first6.build()).map(|s| s.proto),
            Some(44),
            "an IPv6 fragment is seen as its fragment header"
        );
        assert_eq!(Seen::parse(&crate::frames::arp()), None, "ARP is not IP");
    }

    #[test]
    fn tcp_counter_counts_connections_that_carried_data() {
        let c = Counter::tcp(loopback()).expect("a TCP counter on loopback");
        {
            let mut s = TcpStream::connect(c.local_addr()).expect("a connection to the counter");
            s.write_all(b"one\ntwo\n")
                .expect("two lines to the counter");
        }
        // A connection that sends nothing is not counted.
        drop(TcpStream::connect(c.local_addr()).expect("a second connection to the counter"));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while c.counts().count < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(c.finish(), Counts { count: 1, bytes: 8 });
    }
}
