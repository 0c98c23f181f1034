//! Wakes the daemon when an interface appears, disappears or changes: a
//! NETLINK_ROUTE socket subscribed to RTMGRP_LINK (and the address and route groups) in the daemon's network
//! namespace. The messages are not parsed: any of them (and a lost one,
//! reported as ENOBUFS) makes the daemon compare its interface's current
//! index with the one it attached to (`Daemon::follow_interface`), so the
//! kernel's interface table, not the message stream, is the truth. Twenty
//! lines of libc instead of an rtnetlink stack, for five multicast groups.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

const RTMGRP_LINK: u32 = 1;
/// Address changes: an appliance's own addresses are what its --role rows
/// and lockout guard cover, so it follows them as promptly as its links.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// Route changes: which leg a profile's addresses sit behind is the
/// kernel's route to them (`routes`).
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

pub(crate) struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Must run inside the runtime (the socket is registered with it).
    pub(crate) fn open() -> io::Result<LinkEvents> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; we set family and groups.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_ROUTE;
        // SAFETY: `sa` is a sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (and
        // so keeps it open and unchanged) until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(LinkEvents { fd })
    }

    /// Waits for at least one link message and drains what is queued.
    pub(crate) async fn changed(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let mut got = false;
            loop {
                // SAFETY: recv into a buffer we own, of the length passed.
                let n = unsafe {
                    libc::recv(
                        guard.get_inner().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    got = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    // Messages were lost: the caller re-checks anyway.
                    Some(libc::ENOBUFS) => got = true,
                    Some(libc::EINTR) => {}
                    _ if n == 0 => {
                        guard.clear_ready();
                        break;
                    }
                    _ => return Err(e),
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}
