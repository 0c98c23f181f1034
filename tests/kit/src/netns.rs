//! Network namespaces and veth pairs made by a test, removed when dropped.
//!
//! Two ways to run something inside a namespace:
//! - `ns_exec` builds `ip netns exec NS …`: the child also gets a private
//!   mount namespace where /sys is remounted, which hides the host's bpffs —
//!   pins made there vanish with the process (portguard mounts a fresh bpffs
//!   inside and says so);
//! - `spawn_in` enters only the network namespace (setns in `pre_exec`), so
//!   /sys/fs/bpf and /run stay the host's: use it when pins must outlive the
//!   process (restart, `stats`, `detach`).

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
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
        let name = format!("{prefix}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
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
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).output();
    }
}

/// Runs a command, returning stdout; a non-zero exit is an error with stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A veth pair with one end in each namespace, both up.
pub fn veth_pair(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name,
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

/// Runs `f` on a fresh thread that has entered `ns`'s network namespace:
/// sockets it opens live there.
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    match thread_in(ns, f)?.join() {
        Ok(r) => r.context("setns"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
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

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[test]
    fn two_namespaces_talk_over_a_veth_pair() {
        if !crate::require_privileges("two_namespaces_talk_over_a_veth_pair") {
            return;
        }
        let a = NetNs::new("pgkit-a").unwrap_or_else(|e| panic!("{e:#}"));
        let b = NetNs::new("pgkit-b").unwrap_or_else(|e| panic!("{e:#}"));
        veth_pair(&a, "kita0", &b, "kitb0").unwrap_or_else(|e| panic!("{e:#}"));
        addr(&a, "kita0", "198.18.7.1/24").unwrap_or_else(|e| panic!("{e:#}"));
        addr(&b, "kitb0", "198.18.7.2/24").unwrap_or_else(|e| panic!("{e:#}"));
        let rx = in_netns(&b, || UdpSocket::bind("198.18.7.2:4000")).unwrap_or_else(|e| panic!("{e:#}"));
        let rx = rx.unwrap_or_else(|e| panic!("bind in b: {e}"));
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap_or_else(|e| panic!("{e}"));
        in_netns(&a, || {
            let tx = UdpSocket::bind("198.18.7.1:0").unwrap_or_else(|e| panic!("bind in a: {e}"));
            tx.send_to(b"hello", "198.18.7.2:4000").unwrap_or_else(|e| panic!("send: {e}"));
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap_or_else(|e| panic!("nothing arrived across the veth: {e}"));
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from.ip().to_string(), "198.18.7.1");
        let name = a.name().to_string();
        drop(a);
        let list = run(Command::new("ip").args(["netns", "list"])).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(!list.contains(&name), "{name} still exists after drop");
    }
}
