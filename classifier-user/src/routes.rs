//! Which leg a `--profile` prefix sits behind: the kernel's own route to it
//! (`RTM_GETROUTE`), asked in the daemon's network namespace.
//!
//! Appliance mode applies a profile's outbound rows only to packets that
//! arrive on that leg: a strict reverse-path check (RFC 3704), so that a
//! frame on the internet leg that claims an Edge Server's address as its
//! source is not taken for the Edge's own. The routing table is the truth;
//! the daemon asks again on every route change (netlink) and once a second,
//! and a change is a policy swap like a reload.
//!
//! One request and one answer on a netlink socket: a few dozen lines of
//! libc, as the link watcher is, rather than an rtnetlink stack.

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::policy::Prefix;

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
/// `rtm_type` of a route through a gateway or a link: the only kind that
/// puts an address behind a leg (local, anycast, broadcast, unreachable,
/// blackhole and prohibit routes do not).
const RTN_UNICAST: u8 = 1;
#[cfg(test)]
const RTN_LOCAL: u8 = 2;
const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;

/// The legs (indexes into `legs`, the legs' interface indexes in `--iface`
/// order) that each prefix's route leaves by. A prefix routed through no
/// leg, to the box itself, or nowhere is left out.
pub(crate) fn profile_legs(prefixes: &[Prefix], legs: &[u32]) -> BTreeMap<Prefix, u32> {
    let Ok(socket) = Netlink::open() else {
        return BTreeMap::new();
    };
    prefixes
        .iter()
        .filter_map(|p| {
            let oif = socket.route_oif(probe_address(p)).ok().flatten()?;
            let leg = legs.iter().position(|&l| l == oif && l != 0)?;
            Some((*p, leg as u32))
        })
        .collect()
}

/// The address whose route stands for the prefix's: the prefix itself for
/// a host prefix, else its first address after the network address (which
/// a router on the subnet holds as its subnet-router anycast address, a
/// route to the box itself).
fn probe_address(p: &Prefix) -> IpAddr {
    // Lengths are in the mapped IPv6 space: a host is /128 in both families.
    let host_len = 128;
    let mut addr = p.addr;
    if p.len < host_len {
        for byte in addr.iter_mut().rev() {
            let (next, carry) = byte.overflowing_add(1);
            *byte = next;
            if !carry {
                break;
            }
        }
    }
    Prefix {
        addr,
        len: host_len,
    }
    .ip()
}

struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // An answer never takes long; a kernel that does not answer must
        // not hang the daemon's loop.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a timeval of the size passed, for this socket.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Netlink { fd })
    }

    /// The output interface of the route to `ip`; `None` when it is one of
    /// the box's own addresses or unreachable.
    fn route_oif(&self, ip: IpAddr) -> io::Result<Option<u32>> {
        let (family, addr): (u8, Vec<u8>) = match ip {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        let attr_len = 4 + addr.len();
        let len = NLMSG_HDRLEN + RTMSG_LEN + attr_len;
        let mut msg = Vec::with_capacity(len);
        // struct nlmsghdr: len, type, flags, seq, pid.
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope, type, flags (u32).
        let dst_len = (addr.len() * 8) as u8;
        msg.extend_from_slice(&[family, dst_len, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct rtattr RTA_DST, then the address (4 or 16 bytes: aligned).
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&RTA_DST.to_ne_bytes());
        msg.extend_from_slice(&addr);
        // SAFETY: send from a buffer we own, of the length passed.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: recv into a buffer we own, of the length passed.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(parse_route_reply(&buf[..n as usize]))
    }
}

/// The `RTA_OIF` of an `RTM_NEWROUTE` answer for a unicast route; `None`
/// for an error answer (no route), any other kind of route, or a malformed
/// message.
fn parse_route_reply(buf: &[u8]) -> Option<u32> {
    let u16_at = |at: usize| {
        buf.get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        buf.get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let len = u32_at(0)? as usize;
    let kind = u16_at(4)?;
    if kind == NLMSG_ERROR || kind != RTM_NEWROUTE || len > buf.len() {
        return None;
    }
    let rtm_type = *buf.get(NLMSG_HDRLEN + 7)?;
    if rtm_type != RTN_UNICAST {
        return None;
    }
    let mut at = NLMSG_HDRLEN + RTMSG_LEN;
    while at + 4 <= len {
        let attr_len = usize::from(u16_at(at)?);
        let attr_type = u16_at(at + 2)?;
        if attr_len < 4 {
            return None;
        }
        if attr_type == RTA_OIF && attr_len >= 8 {
            return u32_at(at + 4);
        }
        at += (attr_len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(rtm_type: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![
            libc::AF_INET as u8,
            32,
            0,
            0,
            254,
            0,
            0,
            rtm_type,
            0,
            0,
            0,
            0,
        ];
        for (t, v) in attrs {
            body.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn the_output_interface_is_read_past_other_attributes() {
        let m = reply(
            1,
            &[(RTA_DST, &[198, 18, 2, 10]), (RTA_OIF, &7u32.to_ne_bytes())],
        );
        assert_eq!(parse_route_reply(&m), Some(7));
    }

    #[test]
    fn a_local_route_an_error_and_a_torn_message_name_no_leg() {
        let local = reply(RTN_LOCAL, &[(RTA_OIF, &1u32.to_ne_bytes())]);
        assert_eq!(parse_route_reply(&local), None, "the box's own address");
        let mut error = reply(1, &[(RTA_OIF, &3u32.to_ne_bytes())]);
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_route_reply(&error), None, "no route");
        let whole = reply(1, &[(RTA_OIF, &3u32.to_ne_bytes())]);
        assert_eq!(parse_route_reply(&whole[..whole.len() - 6]), None, "torn");
        let zero_len_attr = {
            let mut m = reply(1, &[(RTA_DST, &[0, 0, 0, 0])]);
            let at = NLMSG_HDRLEN + RTMSG_LEN;
            m[at..at + 2].copy_from_slice(&0u16.to_ne_bytes());
            m
        };
        assert_eq!(
            parse_route_reply(&zero_len_attr),
            None,
            "a zero-length attribute"
        );
    }

    #[test]
    fn a_network_is_probed_at_its_first_address_and_a_host_at_itself() {
        let probe =
            |s: &str| probe_address(&s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).to_string();
        assert_eq!(probe("198.18.2.0/24"), "198.18.2.1");
        assert_eq!(probe("198.18.2.10/32"), "198.18.2.10");
        assert_eq!(probe("2001:db8:2::/64"), "2001:db8:2::1");
        assert_eq!(probe("2001:db8:2::12/128"), "2001:db8:2::12");
    }

    #[test]
    fn the_kernel_routes_loopback_to_the_box_itself() {
        // Needs no privileges: any process may ask for a route.
        let socket = Netlink::open().expect("netlink socket");
        let oif = socket
            .route_oif("127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")))
            .expect("RTM_GETROUTE 127.0.0.1");
        assert_eq!(oif, None, "127.0.0.1 is local: behind no leg");
    }
}
