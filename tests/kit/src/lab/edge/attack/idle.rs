//! Connections that sit idle through the attacks and must work after them:
//! TCP (a real socket at each end) and a UDP flow, each a message each way
//! with either side speaking first.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{ConnRow, Mode};
use crate::{
    netns::{NetNs, in_netns},
    sockets::connect_from,
};

/// How long one side of a TCP connection waits for the other's message.
/// TCP sends a lost segment again within it (after 0.2, 0.6, 1.4, 3.0 s),
/// so a message a loaded Edge dropped once still arrives: what the
/// scenario checks is that the firewall lets it through, not that nothing
/// on the way is ever full.
const WAIT: Duration = Duration::from_secs(6);
/// UDP has no second try: a datagram either arrives at once or was dropped.
const UDP_WAIT: Duration = Duration::from_secs(2);

/// Which end of a connection speaks first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Speaker {
    /// The end whose packets a rule passes (the client of a connection to
    /// an Edge service, the Edge for its outbound rows, the host for its
    /// own connections): what it sends makes or refreshes the flow entry.
    Rule,
    /// The end whose packets pass only as answers, through the flow entry.
    Answer,
}

enum Ends {
    Tcp {
        rule: TcpStream,
        answer: TcpStream,
    },
    Udp {
        rule: UdpSocket,
        rule_at: SocketAddr,
        answer: UdpSocket,
        answer_at: SocketAddr,
    },
}

/// One connection or flow and its two ends.
pub(super) struct Conn {
    pub what: String,
    /// (rule side, answer side), in words.
    pub names: (&'static str, &'static str),
    ends: Ends,
    sequence: u32,
    /// Set once an exchange over TCP failed: its message may still arrive
    /// late and would be misread as the next one, so later exchanges on
    /// this connection are reported as not run.
    broken: Option<String>,
}

impl Conn {
    /// A TCP connection from `from` (port 0: any) to `listener`, which
    /// lives in `to_ns`; `from_ns` is where the connecting socket lives.
    pub fn tcp(
        what: String,
        names: (&'static str, &'static str),
        from_ns: &NetNs,
        from: SocketAddr,
        listener: &TcpListener,
    ) -> Result<Conn> {
        let to = listener.local_addr()?;
        let mut rule = in_netns(from_ns, || connect_from(from, to, WAIT))?
            .with_context(|| format!("{what}: connecting {from} -> {to}"))?;
        // The client speaks at once, as a TLS or SIP client does. Under a
        // SYN flood the Edge answers with a SYN cookie and keeps nothing:
        // the handshake's last ACK, if something full on the way drops it,
        // is not sent again, but this message is, and completes it.
        let hello = b"pg-attack hello";
        rule.write_all(hello)
            .with_context(|| format!("{what}: the client's first message"))?;
        let mut answer =
            accept_from(listener, from, WAIT).with_context(|| format!("{what}: accepting"))?;
        for s in [&rule, &answer] {
            s.set_read_timeout(Some(WAIT))?;
            s.set_nodelay(true)?;
        }
        let mut buf = [0u8; 15];
        answer
            .read_exact(&mut buf)
            .with_context(|| format!("{what}: the client's first message did not arrive"))?;
        if &buf != hello {
            bail!("{what}: the first message arrived as {buf:?}");
        }
        Ok(Conn {
            what,
            names,
            ends: Ends::Tcp { rule, answer },
            sequence: 0,
            broken: None,
        })
    }

    /// A UDP flow between `rule_at` (bound in `rule_ns`) and `answer_at`
    /// (bound in `answer_ns`).
    pub fn udp(
        what: String,
        names: (&'static str, &'static str),
        (rule_ns, rule_at): (&NetNs, SocketAddr),
        (answer_ns, answer_at): (&NetNs, SocketAddr),
    ) -> Result<Conn> {
        let rule = in_netns(rule_ns, || UdpSocket::bind(rule_at))?
            .with_context(|| format!("{what}: binding {rule_at}"))?;
        let answer = in_netns(answer_ns, || UdpSocket::bind(answer_at))?
            .with_context(|| format!("{what}: binding {answer_at}"))?;
        let rule_at = rule.local_addr()?;
        for s in [&rule, &answer] {
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
        }
        Ok(Conn {
            what,
            names,
            ends: Ends::Udp {
                rule,
                rule_at,
                answer,
                answer_at,
            },
            sequence: 0,
            broken: None,
        })
    }

    /// Who speaks first, in words.
    pub fn first_name(&self, first: Speaker) -> &'static str {
        match first {
            Speaker::Rule => self.names.0,
            Speaker::Answer => self.names.1,
        }
    }

    /// A message from `first` to the other end, then one back: Ok, or what
    /// went wrong. A failed exchange marks the connection broken.
    pub fn exchange(&mut self, first: Speaker) -> Result<(), String> {
        if let Some(why) = &self.broken {
            return Err(format!("not run: broken earlier ({why})"));
        }
        self.sequence += 1;
        let there = format!("pg-attack {:08} there", self.sequence);
        let back = format!("pg-attack {:08} back ", self.sequence);
        let result = match &mut self.ends {
            Ends::Tcp { rule, answer } => {
                let (a, b) = match first {
                    Speaker::Rule => (rule, answer),
                    Speaker::Answer => (answer, rule),
                };
                tcp_message(a, b, &there).and_then(|()| tcp_message(b, a, &back))
            }
            Ends::Udp {
                rule,
                rule_at,
                answer,
                answer_at,
            } => {
                let (a, a_at, b, b_at) = match first {
                    Speaker::Rule => (&*rule, *rule_at, &*answer, *answer_at),
                    Speaker::Answer => (&*answer, *answer_at, &*rule, *rule_at),
                };
                udp_message(a, b, b_at, a_at, &there)
                    .and_then(|()| udp_message(b, a, a_at, b_at, &back))
            }
        };
        // A dropped datagram does not come back later; a TCP segment does.
        if let (Err(why), Ends::Tcp { .. }) = (&result, &self.ends) {
            self.broken = Some(why.clone());
        }
        result
    }

    pub fn is_udp(&self) -> bool {
        matches!(self.ends, Ends::Udp { .. })
    }
}

/// Accepts the connection from `from` within `within`. The listener is
/// shared: a connection an earlier attempt left (say one whose handshake
/// ended only after its client gave up) is closed, not taken for this one.
fn accept_from(listener: &TcpListener, from: SocketAddr, within: Duration) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + within;
    loop {
        match listener.accept() {
            Ok((s, peer)) if peer == from => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection from {from} within {within:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn tcp_message(from: &mut TcpStream, to: &mut TcpStream, text: &str) -> Result<(), String> {
    from.write_all(text.as_bytes())
        .map_err(|e| format!("writing {text:?}: {e}"))?;
    let mut buf = vec![0u8; text.len()];
    to.read_exact(&mut buf)
        .map_err(|e| format!("{text:?} did not arrive within {WAIT:?}: {e}"))?;
    if buf != text.as_bytes() {
        return Err(format!(
            "expected {text:?}, read {:?}",
            String::from_utf8_lossy(&buf)
        ));
    }
    Ok(())
}

/// `text` from `from` (at `from_at`) to `to` (at `to_at`); anything else
/// `to` reads meanwhile is skipped.
fn udp_message(
    from: &UdpSocket,
    to: &UdpSocket,
    to_at: SocketAddr,
    from_at: SocketAddr,
    text: &str,
) -> Result<(), String> {
    from.send_to(text.as_bytes(), to_at)
        .map_err(|e| format!("sending {text:?}: {e}"))?;
    let deadline = Instant::now() + UDP_WAIT;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if let Ok((n, peer)) = to.recv_from(&mut buf)
            && peer == from_at
            && &buf[..n] == text.as_bytes()
        {
            return Ok(());
        }
    }
    Err(format!("{text:?} did not arrive within {UDP_WAIT:?}"))
}

/// A message each way on every connection, `first` speaking first.
pub(super) fn check_all(
    conns: &mut [Conn],
    mode: Mode,
    phase: &str,
    first: Speaker,
) -> Vec<ConnRow> {
    conns
        .iter_mut()
        .map(|c| {
            let result = c.exchange(first);
            ConnRow {
                mode,
                phase: phase.to_string(),
                what: c.what.clone(),
                first: c.first_name(first).to_string(),
                expected: true,
                worked: result.is_ok(),
                detail: result.err().unwrap_or_default(),
            }
        })
        .collect()
}

/// The UDP flows with their answering side first, expected to be dropped
/// (after a restart with a clean flow table, before the rule side speaks).
pub(super) fn udp_expecting_drop(conns: &mut [Conn], mode: Mode, phase: &str) -> Vec<ConnRow> {
    conns
        .iter_mut()
        .filter(|c| c.is_udp())
        .map(|c| {
            let result = c.exchange(Speaker::Answer);
            ConnRow {
                mode,
                phase: phase.to_string(),
                what: c.what.clone(),
                first: c.first_name(Speaker::Answer).to_string(),
                expected: false,
                worked: result.is_ok(),
                detail: result.err().map_or_else(String::new, |e| {
                    format!("{e} (dropped: the flow table was lost)")
                }),
            }
        })
        .collect()
}
