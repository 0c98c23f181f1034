//! The lab's traffic over real sockets: a listener that counts what reaches
//! it, paced datagrams, and one case's UDP datagrams or TCP connection
//! attempt from an address of a namespace.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    netns::{NetNs, in_netns},
    sockets::{Counter, connect_from},
};

/// Datagrams of each UDP case.
pub(crate) const UDP_DATAGRAMS: u32 = 20;
/// Messages written over each TCP connection that opens.
const TCP_MESSAGES: u32 = 3;
/// The gap before each datagram of a case: a veth drops nothing, but the
/// receiver's buffer should not be the thing measured.
pub(crate) const PACE: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A counting listener of `proto` at `at`, bound in `ns`.
pub(crate) fn listen(ns: &NetNs, proto: Proto, at: SocketAddr) -> Result<Counter> {
    in_netns(ns, || match proto {
        Proto::Udp => Counter::udp(at),
        Proto::Tcp => Counter::tcp(at),
    })?
    .with_context(|| format!("binding {} {at} in {}", proto.name(), ns.name()))
}

/// `n` datagrams from `sock` to `to`, `pace` before each; `payload(i)` is
/// the i-th. Returns how many the kernel took.
pub(crate) fn datagrams(
    sock: &UdpSocket,
    to: SocketAddr,
    n: u32,
    pace: Duration,
    payload: impl Fn(u32) -> Vec<u8>,
) -> u32 {
    let sent = (0..n)
        .filter(|&i| {
            std::thread::sleep(pace);
            sock.send_to(&payload(i), to).is_ok()
        })
        .count();
    u32::try_from(sent).unwrap_or(u32::MAX)
}

/// `text` behind an RTP version 2 header (RFC 3550): what a media port
/// carries, so that the media rules' payload check passes the lab's
/// datagrams as it passes a call's, on every port alike.
pub fn rtp_shaped(text: &str) -> Vec<u8> {
    let mut v = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0x70, 0x67, 0x6c, 0x62];
    v.extend_from_slice(text.as_bytes());
    v
}

/// A STUN Binding request (RFC 8489: type 0x0001, no attributes, the magic
/// cookie, a transaction id from `id`): what a STUN client or a media
/// relay sends first to a STUN port, and what a media rule's STUN port
/// passes.
pub fn stun_binding_request(id: u32) -> Vec<u8> {
    let mut v = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v
}

/// What a UDP case's datagrams carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Text behind an RTP header ([`rtp_shaped`]).
    Rtp,
    /// A STUN Binding request ([`stun_binding_request`]).
    StunBinding,
}

impl Payload {
    /// The `i`-th datagram of a case.
    pub fn datagram(self, i: u32) -> Vec<u8> {
        match self {
            Payload::Rtp => rtp_shaped(&format!("portguard lab {i}")),
            Payload::StunBinding => stun_binding_request(i),
        }
    }
}

/// One case's traffic, from `from` (call it in the sender's namespace):
/// [`UDP_DATAGRAMS`] paced datagrams carrying `payload`, or one TCP
/// connection attempt that writes a few messages if it connects. Returns
/// the datagrams sent, or 1 for the attempt: an attempt that got no answer
/// counts as sent too.
pub(crate) fn send_case(proto: Proto, payload: Payload, from: IpAddr, to: SocketAddr) -> u32 {
    match proto {
        Proto::Udp => {
            let Ok(sock) = UdpSocket::bind(SocketAddr::new(from, 0)) else {
                return 0;
            };
            datagrams(&sock, to, UDP_DATAGRAMS, PACE, |i| payload.datagram(i))
        }
        Proto::Tcp => {
            // From `from` itself: a namespace with several addresses would
            // otherwise pick one, and address sets tell them apart.
            let attempt = connect_from(SocketAddr::new(from, 0), to, Duration::from_secs(1));
            if let Ok(mut s) = attempt {
                for i in 0..TCP_MESSAGES {
                    let _ = s.write_all(format!("portguard lab message {i}\n").as_bytes());
                }
            }
            1
        }
    }
}
