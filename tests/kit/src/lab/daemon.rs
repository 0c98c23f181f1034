//! portguard as the lab runs it: a child in a namespace whose output is
//! drained, the wait until every leg carries the program, and one
//! scenario's run of it from start to SIGINT ([`Session`]).

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::AtomicBool,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    check_interrupted,
    metrics::{self, Live, Scrape},
};
use crate::netns::{NetNs, ns_exec};

/// portguard as a child: stdout and stderr drained on threads (a full pipe
/// would block it), and SIGINT on drop if it still runs, so that no error
/// path leaves it attached.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    }))
}

fn joined(h: &mut Option<JoinHandle<String>>) -> String {
    h.take().and_then(|h| h.join().ok()).unwrap_or_default()
}

impl Daemon {
    pub(crate) fn spawn(mut cmd: Command) -> Result<Daemon> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portguard in the server namespace")?;
        let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
        Ok(Daemon {
            child,
            stdout,
            stderr,
        })
    }

    fn interrupt(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped
            // while this guard holds it.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    }

    /// SIGINT, then wait for the exit; (stdout, stderr).
    pub(crate) fn stop(&mut self, within: Duration) -> Result<(String, String)> {
        self.interrupt();
        let deadline = Instant::now() + within;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "portguard did not exit within {within:?} of SIGINT:\n{}",
                    joined(&mut self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((joined(&mut self.stdout), joined(&mut self.stderr)))
    }

    /// Polls until every interface in `legs` shows `prog/xdp` in `ns`.
    pub(crate) fn wait_attached(
        &mut self,
        ns: &NetNs,
        legs: &[&str],
        interrupted: &AtomicBool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "portguard exited early ({status}):\n{}",
                    joined(&mut self.stderr)
                );
            }
            let mut attached = true;
            for leg in legs {
                attached &= carries_xdp(ns, leg)?;
            }
            if attached {
                return Ok(());
            }
            check_interrupted(interrupted)?;
            if Instant::now() > deadline {
                bail!(
                    "portguard did not attach to {} within 15 s",
                    legs.join(" and ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && self.stop(Duration::from_secs(5)).is_err()
        {
            eprintln!("lab: portguard ignored SIGINT and was killed");
        }
    }
}

/// Whether `iface` in `ns` has an XDP program: `prog/xdp` is native mode
/// (`xdpgeneric` would mean a fallback).
fn carries_xdp(ns: &NetNs, iface: &str) -> Result<bool> {
    Ok(ns.ip(&["link", "show", "dev", iface])?.contains("prog/xdp"))
}

/// Whether every leg is free of XDP (after portguard exited).
pub(crate) fn detached(ns: &NetNs, legs: &[&str]) -> Result<bool> {
    let mut free = true;
    for leg in legs {
        free &= !carries_xdp(ns, leg)?;
    }
    Ok(free)
}

/// portguard over one run of a scenario: started in `ns` with `ip netns
/// exec` on its legs (or, without a binary, no firewall at all: the
/// scenario then checks the lab itself), the live line while the traffic
/// flows, the counters when the scenario asks, and at the end SIGINT.
pub(crate) struct Session<'a> {
    ns: &'a NetNs,
    legs: &'a [&'a str],
    daemon: Option<Daemon>,
    live: Option<Live>,
    interrupted: &'a AtomicBool,
}

/// How a session ended: portguard's summary on SIGINT, and whether every
/// leg was free of XDP after it.
pub(crate) struct Ended {
    pub summary: String,
    pub detached: bool,
}

impl<'a> Session<'a> {
    /// `bin ARGS` in `ns`, waited for until every leg carries the program;
    /// with `live`, a line of totals every half second.
    pub(crate) fn start(
        ns: &'a NetNs,
        legs: &'a [&'a str],
        bin: Option<&Path>,
        args: &[String],
        live: bool,
        interrupted: &'a AtomicBool,
    ) -> Result<Session<'a>> {
        let daemon = match bin {
            Some(bin) => {
                let bin = bin.to_str().context("portguard path is not UTF-8")?;
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut d = Daemon::spawn(ns_exec(ns, bin, &args))?;
                d.wait_attached(ns, legs, interrupted)?;
                Some(d)
            }
            None => None,
        };
        let live = if live && daemon.is_some() {
            Some(Live::start(ns)?)
        } else {
            None
        };
        Ok(Session {
            ns,
            legs,
            daemon,
            live,
            interrupted,
        })
    }

    /// The counters now; `None` without portguard, or if its endpoint did
    /// not answer.
    pub(crate) fn scrape(&self) -> Option<Scrape> {
        self.daemon.as_ref()?;
        metrics::scrape(self.ns).ok()
    }

    /// Stops the live line, then portguard (SIGINT). Without portguard:
    /// no summary, and nothing attached.
    pub(crate) fn end(mut self) -> Result<Ended> {
        drop(self.live.take());
        check_interrupted(self.interrupted)?;
        let Some(mut daemon) = self.daemon.take() else {
            return Ok(Ended {
                summary: String::new(),
                detached: true,
            });
        };
        let (summary, _log) = daemon.stop(Duration::from_secs(10))?;
        Ok(Ended {
            summary,
            detached: detached(self.ns, self.legs)?,
        })
    }
}
