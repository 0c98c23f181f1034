//! The control socket: `/run/portguard/IF.sock`, a unix stream socket with
//! mode 0600 that serves root only (SO_PEERCRED), speaking JSON Lines. One
//! request line per connection; the answer is one or more JSON lines.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};

use super::{
    Shared,
    record::EventRecord,
    store::{PortAggregate, RefusedPeer, TopView},
};

/// Most clients attached at once; more are refused, so that memory stays
/// bounded however many attach.
pub(crate) const MAX_CLIENTS: usize = 16;
/// Events queued for one `--follow` client; a client this far behind is
/// dropped (and counted) rather than slowing the reader.
pub(crate) const FOLLOW_QUEUE: usize = 1_024;
/// A client that takes longer than this to accept one line is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a `--follow` client is checked for a hang-up. Without the
/// check a client whose filter never matches is never written to, so its
/// death went unnoticed and its slot was never freed.
pub(crate) const HANGUP_CHECK: Duration = Duration::from_secs(1);
/// Where the host's own outgoing connections get their source ports.
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

pub fn socket_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.sock"))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The last `count` events (all kept when absent) of `verdict` (any when
    /// absent); with `follow`, then every new one.
    Events {
        count: Option<usize>,
        verdict: Option<String>,
        follow: bool,
    },
    /// Aggregates since start, for `suggest`.
    Aggregates,
    /// The last minute, for `top`.
    Top,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Aggregates {
    pub iface: String,
    pub roles: Vec<String>,
    pub catalog: Option<PathBuf>,
    /// The embedded catalog's edition (`run --edition`) when `catalog` is
    /// none; absent from a daemon older than editions (2015).
    #[serde(default)]
    pub edition: Option<String>,
    pub mode: String,
    pub ports: Vec<PortAggregate>,
    pub events_received: u64,
    pub suppressed: u64,
    /// Events to new ports that found the key table full.
    #[serde(default)]
    pub ports_overflow: u64,
    /// Ports seen once, forgotten to make room (a scan's).
    #[serde(default)]
    pub ports_evicted: u64,
    /// The daemon's network namespace's ephemeral port range
    /// (`net.ipv4.ip_local_port_range`, which IPv6 uses too): where answers
    /// to the host's own connections arrive. None if it could not be read.
    #[serde(default)]
    pub ephemeral: Option<(u16, u16)>,
    /// `run --client-media-ports`: the catalog's media rows narrowed to it.
    #[serde(default)]
    pub client_media_ports: Option<(u16, u16)>,
    /// Peers a rule's address sets left out (`peer_not_allowed`), busiest
    /// first, at most `store::MAX_REFUSED_PEERS`.
    #[serde(default)]
    pub refused_peers: Vec<RefusedPeer>,
    /// `peer_not_allowed` events past that cap.
    #[serde(default)]
    pub refused_peers_overflow: u64,
}

/// `net.ipv4.ip_local_port_range` as this process sees it (its network
/// namespace's).
pub(crate) fn local_port_range() -> Option<(u16, u16)> {
    parse_port_range(&std::fs::read_to_string(LOCAL_PORT_RANGE).ok()?)
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Top {
    pub(crate) iface: String,
    pub mode: String,
    pub view: TopView,
    pub suppressed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorLine {
    pub error: String,
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub(crate) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    // The umask closes the window between bind and chmod.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub(crate) async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = reply_error(
                    &mut stream,
                    &format!("too many clients (at most {MAX_CLIENTS})"),
                )
                .await;
            });
            continue;
        }
        tokio::spawn(async move {
            client(stream, &shared).await;
            shared.clients.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn reply_error(stream: &mut UnixStream, msg: &str) -> std::io::Result<()> {
    let line = serde_json::to_string(&ErrorLine {
        error: msg.to_string(),
    })
    .unwrap_or_default();
    write_line(stream, &line).await
}

async fn write_line(stream: &mut UnixStream, line: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client stopped reading",
        )),
    }
}

async fn client(mut stream: UnixStream, shared: &Shared) {
    // The file mode already keeps others out; the credentials check holds
    // even if the socket's mode or directory were changed.
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 => {}
        Ok(c) => {
            let _ = reply_error(
                &mut stream,
                &format!(
                    "permission denied: the control socket serves root only (you are uid {})",
                    c.uid()
                ),
            )
            .await;
            return;
        }
        Err(e) => {
            log::warn!("control socket: no peer credentials: {e}");
            return;
        }
    }
    let mut line = String::new();
    let read = {
        let mut reader = BufReader::new((&mut stream).take(64 * 1024));
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await
    };
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let _ = reply_error(&mut stream, &format!("bad request: {e}")).await;
            return;
        }
    };
    match request {
        Request::Aggregates => {
            // One lock for both reads (a second lock() in the same
            // expression would wait for the first guard forever).
            let (ports, events_received, ports_overflow, ports_evicted, refused, refused_overflow) = {
                let store = shared.store();
                (
                    store.aggregates(),
                    store.received,
                    store.ports_overflow,
                    store.ports_evicted,
                    store.refused_peers(),
                    store.refused_overflow,
                )
            };
            let a = Aggregates {
                iface: shared.iface.clone(),
                roles: shared.roles.clone(),
                catalog: shared.catalog.clone(),
                edition: Some(shared.edition.to_string()),
                mode: shared.mode.clone(),
                ports,
                events_received,
                suppressed: shared.suppressed.load(Ordering::Relaxed),
                ports_overflow,
                ports_evicted,
                ephemeral: local_port_range(),
                client_media_ports: shared.client_media_ports,
                refused_peers: refused,
                refused_peers_overflow: refused_overflow,
            };
            let _ = write_line(&mut stream, &serde_json::to_string(&a).unwrap_or_default()).await;
        }
        Request::Top => {
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let t = Top {
                iface: shared.iface.clone(),
                mode: shared.mode.clone(),
                view: shared.store().last_minute(now_s, 10),
                suppressed: shared.suppressed.load(Ordering::Relaxed),
            };
            let _ = write_line(&mut stream, &serde_json::to_string(&t).unwrap_or_default()).await;
        }
        Request::Events {
            count,
            verdict,
            follow,
        } => events(stream, shared, count, verdict, follow).await,
    }
}

/// Whether the client closed its end (or died: the kernel closes it then).
/// POLLHUP on a unix stream socket means both directions are shut, so a
/// client that only shut its writing half after the request (POLLRDHUP)
/// and still reads is kept. Asked without waiting; cheap enough once a
/// second per follower.
fn hung_up(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd that we own, a descriptor the stream keeps open,
    // and a zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

async fn events(
    mut stream: UnixStream,
    shared: &Shared,
    count: Option<usize>,
    verdict: Option<String>,
    follow: bool,
) {
    let keep = |r: &EventRecord| verdict.as_deref().is_none_or(|v| r.event.verdict == v);
    // Subscribe before the snapshot so that nothing falls between the two.
    let mut rx = if follow {
        let (tx, rx) = mpsc::channel::<Arc<EventRecord>>(FOLLOW_QUEUE);
        shared.followers().push(tx);
        Some(rx)
    } else {
        None
    };
    let snapshot = shared.store().recent(count.unwrap_or(usize::MAX), keep);
    for r in snapshot {
        if write_line(&mut stream, &serde_json::to_string(&r).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
    }
    let Some(rx) = rx.as_mut() else {
        return;
    };
    let mut hangup = tokio::time::interval(HANGUP_CHECK);
    hangup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let r = tokio::select! {
            r = rx.recv() => r,
            _ = hangup.tick() => {
                if hung_up(&stream) {
                    return;
                }
                continue;
            }
        };
        let Some(r) = r else { break };
        if !keep(&r) {
            continue;
        }
        if write_line(&mut stream, &serde_json::to_string(&*r).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
    }
    // The reader dropped this subscription: the client fell too far behind.
    let _ = reply_error(
        &mut stream,
        "dropped: this client did not keep up with the events",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_client_is_hung_up_a_half_closed_one_is_not() {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        assert!(!hung_up(&ours), "a connected client seen as hung up");
        let mut theirs = theirs;
        theirs.shutdown().await.expect("shutdown(SHUT_WR)");
        assert!(
            !hung_up(&ours),
            "a client that only stopped writing (it may still read) seen as hung up"
        );
        drop(theirs);
        assert!(hung_up(&ours), "a closed client not seen as hung up");

        // One that dies with our lines unread (POLLERR with the hang-up).
        let (mut ours, theirs) = UnixStream::pair().expect("a socket pair");
        ours.write_all(b"unread\n").await.expect("writing");
        drop(theirs);
        assert!(
            hung_up(&ours),
            "a client that died unread not seen as hung up"
        );
    }

    #[test]
    fn the_local_port_range_is_read_as_linux_writes_it() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1_024, 65_535)));
        assert_eq!(parse_port_range("60999 32768"), None, "reversed");
        assert_eq!(parse_port_range("32768"), None, "one number");
        assert_eq!(parse_port_range("a b"), None, "not numbers");
        assert!(
            local_port_range().is_some(),
            "{LOCAL_PORT_RANGE} unreadable here"
        );
    }
}
