//! Network namespaces and veth pairs made by a test, removed when dropped.
//!
//! Three ways to run something inside a namespace:
//! - `in_netns` / `thread_in` run a closure on a thread that has entered the
//!   network namespace with `setns`: sockets made there live there;
//! - `ns_exec` builds `ip netns exec NS …`: the child also gets a private
//!   mount namespace where /sys is remounted, which hides the host's bpffs.
//!   A program there that pins BPF objects must mount its own
//!   (`mount -t bpf bpf /sys/fs/bpf`; portguard does, and says so), and those
//!   pins vanish with the process;
//! - `spawn_in` enters only the network namespace (setns in `pre_exec`), so
//!   /sys/fs/bpf and /run stay the host's: use it when pins must outlive the
//!   process (restart, `stats`, `detach`).

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace; deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>` (unique across parallel tests and runs),
    /// with `lo` up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NS args…`, checked.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        run(&mut cmd)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Runs a command, returning stdout; a non-zero exit is an error with stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A veth pair with one end in each namespace, both up.
pub fn veth_pair(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Adds an address (IPv6 without duplicate address detection, so it is
/// usable at once).
pub fn addr(ns: &NetNs, ifname: &str, cidr: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["addr", "add", cidr, "dev", ifname, "nodad"])?;
    } else {
        ns.ip(&["addr", "add", cidr, "dev", ifname])?;
    }
    Ok(())
}

/// `ip netns exec NS program args…` (see the module comment for what it hides).
pub fn ns_exec(ns: &NetNs, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, program]).args(args);
    cmd
}

/// Makes `cmd` enter `ns`'s network namespace only, keeping the host's mount
/// namespace (and so the host's bpffs and /run).
pub fn spawn_in(ns: &NetNs, cmd: &mut Command) -> Result<()> {
    let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `file` stays open until the closure
    // is dropped together with `cmd`, after spawn.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &file;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered `ns`'s network namespace
/// (`setns(open("/var/run/netns/NAME"), CLONE_NEWNET)`) and returns its
/// result: sockets it opens live there, and stay there when returned. The
/// namespace is a per-thread attribute, so the caller's thread is untouched.
///
/// Only the network namespace changes: /sys/fs/bpf stays the host's. A child
/// of `ip netns exec` is different: it remounts /sys, so a program there that
/// pins BPF objects must first `mount -t bpf bpf /sys/fs/bpf` inside, and its
/// pins vanish with it.
pub fn in_netns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid while `file` lives.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        match worker.join() {
            Ok(r) => r.with_context(|| format!("setns into {}", ns.name())),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts a thread that enters `ns`'s network namespace and runs `f` there
/// (a listener that lives while the test sends).
pub fn thread_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<io::Result<T>>> {
    let file = File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the fd is valid while `file` lives.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    }))
}

/// Sets `net.*` sysctls of `ns` by writing /proc/sys from a thread inside
/// it (those files belong to the network namespace of the thread that
/// opens them; no `sysctl` binary needed).
pub fn sysctl(ns: &NetNs, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || -> Result<()> {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .with_context(|| format!("setting {key}={value} in {}", ns.name()))?;
        }
        Ok(())
    })?
}

/// The MAC address of an interface in a namespace.
pub fn mac_of(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let text = ns.ip(&["-o", "link", "show", "dev", ifname])?;
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC address for {ifname} in {text}"))?;
    let mut out = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        bail!("`{mac}` is not a MAC address");
    }
    for (o, part) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(part, 16).with_context(|| format!("MAC {mac}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        net::{SocketAddr, TcpStream, UdpSocket},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::sockets::{Counter, Counts};

    #[test]
    fn ns_exec_builds_ip_netns_exec() {
        let ns = NetNs {
            name: "pg-test-x".into(),
        };
        let cmd = ns_exec(&ns, "curl", &["-s", "http://127.0.0.1:9477/metrics"]);
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "netns",
                "exec",
                "pg-test-x",
                "curl",
                "-s",
                "http://127.0.0.1:9477/metrics"
            ]
        );
        assert_eq!(ns.path(), PathBuf::from("/var/run/netns/pg-test-x"));
        // Not created by `new`: nothing to delete (a failed delete is ignored).
        std::mem::forget(ns);
    }

    #[test]
    fn two_namespaces_talk_over_a_veth_pair() {
        if !crate::require_privileges("two_namespaces_talk_over_a_veth_pair") {
            return;
        }
        let a = NetNs::new("pgkit-a").expect("namespace pgkit-a");
        let b = NetNs::new("pgkit-b").expect("namespace pgkit-b");
        veth_pair(&a, "kita0", &b, "kitb0").expect("a veth pair between them");
        addr(&a, "kita0", "198.18.7.1/24").expect("198.18.7.1 in a");
        addr(&b, "kitb0", "198.18.7.2/24").expect("198.18.7.2 in b");
        addr(&a, "kita0", "2001:db8:7::1/64").expect("2001:db8:7::1 in a");
        addr(&b, "kitb0", "2001:db8:7::2/64").expect("2001:db8:7::2 in b");

        let udp4: SocketAddr = ([198, 18, 7, 2], 4000).into();
        let udp6: SocketAddr = "[2001:db8:7::2]:4000"
            .parse()
            .expect("an IPv6 socket address");
        let tcp4: SocketAddr = ([198, 18, 7, 2], 5061).into();
        let (rx4, rx6, rxt) = in_netns(&b, || -> io::Result<_> {
            Ok((
                Counter::udp(udp4)?,
                Counter::udp(udp6)?,
                Counter::tcp(tcp4)?,
            ))
        })
        .expect("setns into b")
        .expect("bind in b");
        // The sockets live in b: from the test's own namespace they are unreachable.
        assert!(
            UdpSocket::bind("198.18.7.1:0").is_err(),
            "198.18.7.1 exists outside the namespace"
        );

        in_netns(&a, || {
            let tx = UdpSocket::bind("198.18.7.1:0").expect("bind in a");
            let tx6 = UdpSocket::bind("[2001:db8:7::1]:0").expect("bind v6 in a");
            for _ in 0..10 {
                tx.send_to(b"hello", udp4).expect("send");
                tx6.send_to(b"hello", udp6).expect("send v6");
            }
            let mut s = TcpStream::connect_timeout(&tcp4, Duration::from_secs(1)).expect("connect");
            s.write_all(b"REGISTER\r\n").expect("write");
        })
        .expect("setns into a");
        let deadline = Instant::now() + Duration::from_secs(3);
        while (rx4.counts().count, rx6.counts().count, rxt.counts().count) != (10, 10, 1)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            rx4.finish(),
            Counts {
                count: 10,
                bytes: 50
            },
            "UDP over IPv4 across the veth"
        );
        assert_eq!(
            rx6.finish(),
            Counts {
                count: 10,
                bytes: 50
            },
            "UDP over IPv6 across the veth"
        );
        assert_eq!(
            rxt.finish(),
            Counts {
                count: 1,
                bytes: 10
            },
            "a TCP connection across the veth"
        );

        let name = a.name().to_string();
        drop(a);
        let list = run(Command::new("ip").args(["netns", "list"])).expect("ip netns list");
        assert!(
            !list.split_whitespace().any(|w| w == name),
            "{name} still exists after drop"
        );
    }
}
