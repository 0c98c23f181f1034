//! `portguard` as a child process: the daemon in the server namespace, and
//! one-shot commands (stats, detach, reload, failed starts).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use super::{Pair, ok, ok_any, poll};
use crate::netns::{NetNs, spawn_in};

/// `WRAPPER… portguard` (the wrapper execs portguard), or `portguard` alone.
fn wrapped_portguard(wrapper: &[&str]) -> Command {
    let bin = crate::portguard_bin();
    match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    }
}

/// `portguard` as a child in the server namespace (setns in `pre_exec`: the
/// host's /sys/fs/bpf and /run stay visible, so pins outlive it), its
/// stdout and stderr in files that can be read while it runs. On drop, a
/// still-running daemon gets SIGTERM (and SIGKILL if it ignores it).
pub struct Daemon {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub iface: String,
}

impl Daemon {
    pub fn spawn(ns: &NetNs, args: &[&str], dir: &Path, name: &str) -> Daemon {
        Daemon::spawn_wrapped(ns, &[], args, dir, name)
    }

    /// `WRAPPER… portguard ARGS…` (the wrapper execs portguard: same pid).
    pub fn spawn_wrapped(
        ns: &NetNs,
        wrapper: &[&str],
        args: &[&str],
        dir: &Path,
        name: &str,
    ) -> Daemon {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let mut cmd = wrapped_portguard(wrapper);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(ok("creating stdout file", fs::File::create(&stdout)))
            .stderr(ok("creating stderr file", fs::File::create(&stderr)));
        ok_any("setns pre_exec", spawn_in(ns, &mut cmd));
        let child = ok("spawning portguard", cmd.spawn());
        let iface = args
            .iter()
            .position(|a| *a == "--iface")
            .and_then(|i| args.get(i + 1))
            .map_or_else(String::new, |s| (*s).to_string());
        Daemon {
            child,
            stdout,
            stderr,
            iface,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn out(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the log shows the metrics endpoint (logged after attaching)
    /// and the interface carries an XDP program.
    pub fn wait_ready(&mut self, pair: &Pair) {
        let mut child_status = None;
        let stderr = self.stderr.clone();
        let ready = poll(Duration::from_secs(20), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                child_status = Some(st);
                return Some(false);
            }
            let log = fs::read_to_string(&stderr).unwrap_or_default();
            (log.contains("metrics on http://") && pair.xdp_attached()).then_some(true)
        });
        match (ready, child_status) {
            (Some(true), _) => {}
            (_, Some(st)) => panic!("portguard exited early ({st}):\n{}", self.log()),
            _ => panic!(
                "portguard did not come up within 20 s:\n{}\n{}",
                self.log(),
                pair.server_link()
            ),
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        if poll(within, || self.log().contains(needle).then_some(())).is_none() {
            panic!(
                "portguard did not log {needle:?} within {within:?}:\n{}",
                self.log()
            );
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, unreaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits for the exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = ok("try_wait", self.child.try_wait()) {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("portguard did not exit within {within:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, and a clean exit within 10 s (a panic with the log otherwise).
    pub fn stop(&mut self) {
        self.signal(libc::SIGINT);
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(
            status.success(),
            "portguard exited {status}:\n{}",
            self.log()
        );
    }

    /// SIGKILL and reap: pinned links stay.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let st = self.wait_exit(Duration::from_secs(5));
        assert!(!st.success(), "portguard survived SIGKILL: {st}");
    }

    /// VmRSS in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        let status = ok(
            "reading /proc/PID/status",
            fs::read_to_string(format!("/proc/{}/status", self.pid())),
        );
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own, unreaped child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs `portguard ARGS` from the test's own namespace (stats, detach and
/// reload only need the pins and the state file).
pub fn portguard(args: &[&str]) -> Output {
    ok(
        "running portguard",
        Command::new(crate::portguard_bin()).args(args).output(),
    )
}

/// Runs `portguard ARGS` inside a namespace (setns only), killed after `within`.
pub fn portguard_in(ns: &NetNs, args: &[&str], within: Duration) -> Output {
    portguard_in_wrapped(ns, &[], args, within)
}

/// `WRAPPER… portguard ARGS…` inside a namespace, killed after `within`.
pub fn portguard_in_wrapped(
    ns: &NetNs,
    wrapper: &[&str],
    args: &[&str],
    within: Duration,
) -> Output {
    let mut cmd = wrapped_portguard(wrapper);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ok_any("setns pre_exec", spawn_in(ns, &mut cmd));
    let mut child = ok("spawning portguard", cmd.spawn());
    let deadline = Instant::now() + within;
    while ok("try_wait", child.try_wait()).is_none() {
        if Instant::now() > deadline {
            // It runs: the failure it was expected to report did not happen.
            // SAFETY: signalling our own, unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let out = child.wait_with_output();
            panic!("portguard {args:?} was expected to fail but kept running: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok("collecting output", child.wait_with_output())
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
