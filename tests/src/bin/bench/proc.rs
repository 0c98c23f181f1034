//! The processes the floods drive, shared by the veth flood (section 3) and
//! the SYN flood through a router (section 7): a child stopped when
//! dropped, with its stderr line by line; portguard started in a namespace
//! and waited on until it serves metrics; trafgen started in a namespace and
//! waited on until its packets flow; portguard's metrics read from inside
//! the namespace that holds the endpoint.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::netns::{NetNs, in_netns, ns_exec, spawn_in};

use crate::sys;

/// A child process stopped with SIGINT (then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    /// Its stderr, line by line.
    lines: Option<mpsc::Receiver<String>>,
    name: &'static str,
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Stops a child started in its own process group (trafgen forks its
    /// senders) and waits until no process of the group is left.
    pub fn stop_group(&mut self) -> Result<()> {
        let pgid = self.child.id() as i32;
        // SAFETY: as above, for the group our child leads.
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let _ = self.stop();
        // SAFETY: signal 0 only checks whether the group still exists.
        while unsafe { libc::kill(-pgid, 0) } == 0 {
            if Instant::now() > deadline {
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Next stderr line containing `needle`, or an error naming what came instead.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let lines = self.lines.as_ref().context("no stderr")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(l) => seen.push(l),
                Err(_) => bail!(
                    "{}: no `{needle}` within {timeout:?}; stderr:\n{}",
                    self.name,
                    seen.join("\n")
                ),
            }
        }
    }

    /// An error naming the exit status and stderr, if the child has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            // The pipe's thread sends what is left before it ends.
            std::thread::sleep(Duration::from_millis(50));
            let said: Vec<String> = self
                .lines
                .as_ref()
                .map(|l| l.try_iter().collect())
                .unwrap_or_default();
            bail!("{} exited ({status}): {}", self.name, said.join("\n"));
        }
        Ok(())
    }

    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        self.signal(libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

fn pipe_lines(child: &mut Child) -> Option<mpsc::Receiver<String>> {
    let err = child.stderr.take()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Some(rx)
}

/// `portguard ARGS` in `ns`'s network namespace only (its pins go to the
/// host's bpffs, where `stats` and the bench find them), once it serves
/// metrics.
pub fn start_portguard(ns: &NetNs, args: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(testkit::portguard_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    spawn_in(ns, &mut cmd)?;
    let mut child = cmd.spawn().context("starting portguard")?;
    let lines = pipe_lines(&mut child);
    let mut p = Proc {
        child,
        lines,
        name: "portguard",
    };
    p.wait_line("metrics on", Duration::from_secs(30))?;
    Ok(p)
}

/// trafgen sending `conf` out of `dev` in `ns`, once 1000 of its packets
/// have left. `-P 1`: one sender process on one CPU; `-A`/`-Q`: the host's
/// socket memory sysctls and IRQ affinities are left alone.
pub fn start_trafgen(ns: &NetNs, dev: &str, conf: &Path) -> Result<Proc> {
    let conf = conf.to_string_lossy();
    let args = [
        "--dev",
        dev,
        "--conf",
        &conf,
        "--cpus",
        "1",
        "--no-sock-mem",
        "--notouch-irq",
        "--no-cpu-stats",
    ];
    let mut cmd = ns_exec(ns, "trafgen", &args);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().context("starting trafgen")?;
    let lines = pipe_lines(&mut child);
    let mut tg = Proc {
        child,
        lines,
        name: "trafgen",
    };
    let t0 = sys::link(ns, dev)?.tx_packets;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys::link(ns, dev)?.tx_packets < t0 + 1000 {
        tg.check_running()?;
        if Instant::now() > deadline {
            bail!("trafgen sent nothing within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(tg)
}

/// What trafgen 0.6.8 says when a flush of its TX_RING gets EAGAIN, which
/// it takes for a fatal error. The kernel returns it now and then to a
/// sender whose veth peer runs XDP (seen on Linux 6.18, most often while TCP
/// shares the device; with the default ring and with one of 32 frames).
const TRAFGEN_EAGAIN: &str = "Flushing TX_RING failed: Resource temporarily unavailable";
/// More restarts than this in one flood: something else is wrong.
const TRAFGEN_MAX_RESTARTS: u32 = 100;

/// trafgen kept sending: started again at once when it gives up on EAGAIN
/// (`TRAFGEN_EAGAIN`), the restarts counted; any other exit is an error.
pub struct Trafgen<'a> {
    ns: &'a NetNs,
    dev: String,
    conf: PathBuf,
    proc: Proc,
    pub restarts: u32,
}

impl<'a> Trafgen<'a> {
    pub fn start(ns: &'a NetNs, dev: &str, conf: &Path) -> Result<Trafgen<'a>> {
        let mut restarts = 0;
        let proc = Trafgen::start_retrying(ns, dev, conf, &mut restarts)?;
        Ok(Trafgen {
            ns,
            dev: dev.to_string(),
            conf: conf.to_path_buf(),
            proc,
            restarts,
        })
    }

    fn start_retrying(ns: &NetNs, dev: &str, conf: &Path, restarts: &mut u32) -> Result<Proc> {
        loop {
            match start_trafgen(ns, dev, conf) {
                Ok(p) => return Ok(p),
                Err(e) if Trafgen::gave_up_on_eagain(&e, *restarts) => *restarts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn gave_up_on_eagain(e: &anyhow::Error, restarts: u32) -> bool {
        format!("{e:#}").contains(TRAFGEN_EAGAIN) && restarts < TRAFGEN_MAX_RESTARTS
    }

    /// Starts trafgen again if it gave up on EAGAIN.
    pub fn keep_running(&mut self) -> Result<()> {
        match self.proc.check_running() {
            Ok(()) => Ok(()),
            Err(e) if Trafgen::gave_up_on_eagain(&e, self.restarts) => {
                self.proc.stop_group()?;
                self.restarts += 1;
                self.proc =
                    Trafgen::start_retrying(self.ns, &self.dev, &self.conf, &mut self.restarts)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub fn stop(&mut self) -> Result<()> {
        self.proc.stop_group()
    }
}

/// portguard's metrics page, fetched from inside `ns` (the endpoint listens
/// on that namespace's loopback).
pub fn metrics(ns: &NetNs, addr: &str) -> Result<String> {
    let body = in_netns(ns, || -> Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })??;
    if !body.contains("portguard_catalog_generation") {
        bail!("not portguard's metrics:\n{body}");
    }
    Ok(body)
}

/// The samples of one metric family: (label text inside the braces, value).
pub fn samples<'a>(body: &'a str, family: &str) -> Result<Vec<(&'a str, f64)>> {
    let mut out = Vec::new();
    for line in body.lines().filter(|l| {
        l.strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    }) {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("metrics line {line}"))?;
        let labels = series
            .split_once('{')
            .map_or("", |(_, l)| l.trim_end_matches('}'));
        let value = value
            .parse::<f64>()
            .with_context(|| format!("metrics line {line}"))?;
        out.push((labels, value));
    }
    Ok(out)
}
