//! Interface names as the kernel knows them: validated before a name becomes
//! part of a path (pins, state, lock), and looked up in the caller's network
//! namespace.

use std::{ffi::CString, net::IpAddr};

/// IFNAMSIZ, terminating NUL included.
const IFNAMSIZ: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--iface {name:?}: {why}")]
pub struct BadName {
    pub(crate) name: String,
    pub(crate) why: &'static str,
}

/// Accepts what the kernel accepts as an interface name (`dev_valid_name`):
/// 1 to 15 bytes, no `/`, no whitespace or `:`, not `.` or `..`. Every
/// command checks this before the name is joined to a directory, so
/// `--iface ../../etc` can never name a path outside portguard's own.
pub fn validate(name: &str) -> Result<(), BadName> {
    let bad = |why| {
        Err(BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty interface name");
    }
    if name.len() >= IFNAMSIZ {
        return bad("longer than 15 bytes (IFNAMSIZ - 1)");
    }
    if name == "." || name == ".." {
        return bad("not an interface name");
    }
    if name.bytes().any(|b| {
        b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace() || b.is_ascii_control()
    }) {
        return bad("interface names contain no '/', ':', whitespace or control characters");
    }
    Ok(())
}

/// The interface's index in this network namespace, 0 when there is none.
pub(crate) fn index(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else {
        return 0;
    };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Whether the interface is a loopback device (IFF_LOOPBACK), asked with
/// SIOCGIFFLAGS in the caller's namespace (sysfs may show another one's).
pub(crate) fn is_loopback(name: &str) -> bool {
    if name == "lo" {
        return true;
    }
    // SAFETY: a zeroed ifreq is valid; the name fits (validated, < IFNAMSIZ).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return false;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket + ioctl on a struct that outlives the call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) };
    unsafe { libc::close(fd) };
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    rc == 0 && (i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & libc::IFF_LOOPBACK) != 0
}

/// The addresses assigned to the interface (IPv4 and IPv6).
pub(crate) fn addresses(name: &str) -> Vec<IpAddr> {
    addresses_where(|ifname| ifname == name.as_bytes())
}

/// Every address configured on the box, on any interface (loopback's
/// included: a packet to 127.0.0.1 is the box's own too).
pub(crate) fn all_addresses() -> Vec<IpAddr> {
    addresses_where(|_| true)
}

fn addresses_where(wanted: impl Fn(&[u8]) -> bool) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if !wanted(ifname.to_bytes()) {
            continue;
        }
        // SAFETY: the family says which sockaddr the pointer holds.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_interface_names_pass() {
        for ok in ["eth0", "lo", "veth-a.10", "x", "abcdefghijklmno", "br_0@x"] {
            assert_eq!(validate(ok), Ok(()), "{ok} should be valid");
        }
    }

    #[test]
    fn path_like_and_oversized_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "a/b",
            "/",
            "eth0 ",
            "e\tx",
            "a:1",
            "abcdefghijklmnop",
            "a\u{0}b",
        ] {
            let e = validate(bad).expect_err(bad);
            assert!(
                e.to_string().starts_with("--iface "),
                "the error names the flag: {e}"
            );
        }
    }
}
