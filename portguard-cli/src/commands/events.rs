//! `portguard events`: the running daemon's packet events, read over its
//! root-only control socket, as text, JSON Lines and/or a pcap file.
//!
//! A follow ends like tcpdump's capture: on SIGINT or SIGTERM the events
//! received so far are all written (the pcap a valid file), and the command
//! exits 0. While it runs, the pcap is flushed at least once a second (with
//! `--packet-buffered`, after every packet), so a SIGKILL loses at most the
//! last second; stdout is written a line at a time.

use std::{
    cell::RefCell,
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    rc::Rc,
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use tokio::{
    io::AsyncBufReadExt as _,
    signal::unix::{SignalKind, signal},
};

use crate::cli::{EventFormat, EventsArgs};
use portguard::{
    events::{
        control::{self, ErrorLine, Request},
        record::EventRecord,
    },
    exit,
};

/// How long a snapshot (no `--follow`) waits for each answer line: a daemon
/// that stops answering must not hang the client.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a followed event waits in the pcap buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "{path}: no running instance on {iface} (no control socket; is `portguard run --iface {iface}` running?)"
    )]
    NotRunning { path: String, iface: String },
    #[error("{path}: permission denied: the control socket is root-only (run as root)")]
    Denied { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the daemon says: {0}")]
    Daemon(String),
    #[error("{0}")]
    Output(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } => exit::USAGE,
            _ => exit::FAILURE,
        }
    }
}

/// Connects to the daemon on `iface` and sends `request`; the reader of its
/// answer lines.
pub fn request(
    run_dir: &Path,
    iface: &str,
    request: &Request,
) -> Result<BufReader<UnixStream>, ClientError> {
    connect(run_dir, iface, request).map(|(stream, _)| BufReader::new(stream))
}

/// Connects to the daemon on `iface` and sends `request`: the stream to read
/// the answer from, and the socket's path as errors show it.
fn connect(
    run_dir: &Path,
    iface: &str,
    request: &Request,
) -> Result<(UnixStream, String), ClientError> {
    // Any leg of an appliance reaches the instance's one socket.
    let path = control::socket_path(run_dir, &portguard::state::instance_of(run_dir, iface));
    let shown = path.display().to_string();
    let mut stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                path: shown.clone(),
                iface: iface.to_string(),
            }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied {
            path: shown.clone(),
        },
        _ => ClientError::Io {
            path: shown.clone(),
            source: e,
        },
    })?;
    // A daemon that stops answering must not hang the client; a follow
    // waits for events as long as it takes.
    let follow = matches!(request, Request::Events { follow: true, .. });
    stream
        .set_read_timeout((!follow).then_some(ANSWER_TIMEOUT))
        .map_err(|e| ClientError::Io {
            path: shown.clone(),
            source: e,
        })?;
    let line = serde_json::to_string(request).map_err(|e| ClientError::Output(e.to_string()))?;
    if let Err(e) = stream.write_all(format!("{line}\n").as_bytes()) {
        // The daemon may have refused and closed before reading the
        // request: its answer is still there to read.
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        if reader.read_line(&mut answer).is_ok_and(|n| n > 0)
            && let Ok(refusal) = serde_json::from_str::<ErrorLine>(answer.trim())
        {
            return Err(ClientError::Daemon(refusal.error));
        }
        return Err(ClientError::Io {
            path: shown,
            source: e,
        });
    }
    Ok((stream, shown))
}

/// One answer line: an error line from the daemon becomes an error.
pub fn parse_line<T: serde::de::DeserializeOwned>(line: &str) -> Result<T, ClientError> {
    if let Ok(e) = serde_json::from_str::<ErrorLine>(line) {
        return Err(ClientError::Daemon(e.error));
    }
    serde_json::from_str(line).map_err(|e| ClientError::Output(format!("bad answer {line:?}: {e}")))
}

pub fn events(args: EventsArgs) -> u8 {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Output(format!("starting the runtime: {e}")))
        .and_then(|runtime| runtime.block_on(run(&args)));
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("portguard events --iface {}: {e}", args.iface);
            e.exit_code()
        }
    }
}

/// The pcap file's buffer. `PcapWriter` gives its writer back only by
/// `into_writer`, and a follow must flush it while it keeps writing, so the
/// writer and the flushes share it.
#[derive(Clone)]
struct SharedFile(Rc<RefCell<BufWriter<File>>>);

impl std::io::Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// `--pcap FILE`: the writer, and whether it holds packets not yet flushed.
struct Pcap {
    writer: PcapWriter<SharedFile>,
    file: SharedFile,
    shown: String,
    per_packet: bool,
    unflushed: bool,
}

impl Pcap {
    /// Creates the file and writes its header through at once: from here on
    /// it is a valid (empty) capture, however the command ends.
    fn create(path: &Path, per_packet: bool) -> Result<Pcap, ClientError> {
        let shown = path.display().to_string();
        let err = |e: &dyn std::fmt::Display| ClientError::Output(format!("--pcap {shown}: {e}"));
        let file = SharedFile(Rc::new(RefCell::new(BufWriter::new(
            File::create(path).map_err(|e| err(&e))?,
        ))));
        let header = PcapHeader {
            snaplen: classifier_common::EVENT_SNAPLEN as u32,
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(file.clone(), header).map_err(|e| err(&e))?;
        let mut pcap = Pcap {
            writer,
            file,
            shown,
            per_packet,
            unflushed: true,
        };
        pcap.flush()?;
        Ok(pcap)
    }

    fn write(&mut self, r: &EventRecord) -> Result<(), ClientError> {
        let data = r.frame_bytes();
        let packet = PcapPacket::new(Duration::from_nanos(r.time_ns), r.event.len, &data);
        self.writer
            .write_packet(&packet)
            .map_err(|e| ClientError::Output(format!("writing {}: {e}", self.shown)))?;
        self.unflushed = true;
        if self.per_packet {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what the buffer holds through to the file, if anything.
    fn flush(&mut self) -> Result<(), ClientError> {
        if self.unflushed {
            self.file
                .flush()
                .map_err(|e| ClientError::Output(format!("writing {}: {e}", self.shown)))?;
            self.unflushed = false;
        }
        Ok(())
    }
}

async fn run(args: &EventsArgs) -> Result<(), ClientError> {
    // Handlers before anything is written: from here on SIGINT and SIGTERM
    // end the loop below (and the pcap is completed) instead of the process.
    let signal_err =
        |e: std::io::Error| ClientError::Output(format!("installing a signal handler: {e}"));
    let mut stop = Stop {
        interrupt: signal(SignalKind::interrupt()).map_err(signal_err)?,
        terminate: signal(SignalKind::terminate()).map_err(signal_err)?,
    };
    let mut pcap = args
        .pcap
        .as_deref()
        .map(|p| Pcap::create(p, args.packet_buffered))
        .transpose()?;
    let result = receive(args, pcap.as_mut(), &mut stop).await;
    // Every way out completes the file, an error from the daemon included:
    // what was received is kept.
    let flushed = pcap.as_mut().map_or(Ok(()), Pcap::flush);
    result.and(flushed)
}

/// The signals that end a follow the way Ctrl-C ends tcpdump.
struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Reads the daemon's answer into stdout and the pcap until the daemon
/// closes it (a snapshot is complete), `--count` is reached, stdout is
/// closed, or a signal says stop.
async fn receive(
    args: &EventsArgs,
    mut pcap: Option<&mut Pcap>,
    stop: &mut Stop,
) -> Result<(), ClientError> {
    let req = Request::Events {
        // With --follow, --count bounds what is printed, not the snapshot.
        count: if args.follow { None } else { args.count },
        verdict: args.verdict.map(|v| v.name().to_string()),
        follow: args.follow,
    };
    let (stream, shown) = connect(&args.run_dir, &args.iface, &req)?;
    let io_err = |source: std::io::Error| ClientError::Io {
        path: shown.clone(),
        source,
    };
    stream.set_nonblocking(true).map_err(io_err)?;
    let stream = tokio::net::UnixStream::from_std(stream).map_err(io_err)?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut printed = 0usize;
    loop {
        let line = tokio::select! {
            // Cancel-safe: a line half read when another branch wins stays
            // buffered for the next call.
            line = lines.next_line() => line,
            _ = tick.tick(), if args.follow => {
                if let Some(p) = pcap.as_deref_mut() {
                    p.flush()?;
                }
                continue;
            }
            _ = tokio::time::sleep(ANSWER_TIMEOUT), if !args.follow => {
                return Err(io_err(std::io::ErrorKind::TimedOut.into()));
            }
            () = stop.recv() => return Ok(()),
        };
        let Some(line) = line.map_err(|e| ClientError::Output(e.to_string()))? else {
            return Ok(());
        };
        let r: EventRecord = parse_line(&line)?;
        // The pcap first: a closed stdout must not cost the file an event.
        if let Some(p) = pcap.as_deref_mut() {
            p.write(&r)?;
        }
        if !print(args.format, &r) {
            // stdout closed (a pipe into `head`): done.
            return Ok(());
        }
        printed += 1;
        if args.count.is_some_and(|max| printed >= max) {
            return Ok(());
        }
    }
}

/// Prints one event on stdout (line-buffered: each line is written when it
/// ends, also into a pipe). `false` when stdout is closed.
fn print(format: EventFormat, r: &EventRecord) -> bool {
    let text = match format {
        EventFormat::Json => serde_json::to_string(&r.event).unwrap_or_default(),
        EventFormat::Text => text_line(r),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").is_ok() && out.flush().is_ok()
}

/// `TIME IFACE VERDICT REASON PROTO SRC:SPORT -> DST:DPORT vlan=.. len=N [role/service]`.
fn text_line(r: &EventRecord) -> String {
    let e = &r.event;
    let ep = |a: Option<std::net::IpAddr>, p: Option<u16>| match (a, p) {
        (Some(std::net::IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "-".to_string(),
    };
    let mut s = format!(
        "{} {} {} {} {} {} -> {}",
        e.time,
        e.iface,
        e.verdict,
        e.reason,
        e.proto,
        ep(e.src, e.sport),
        ep(e.dst, e.dport)
    );
    if !e.vlan.is_empty() {
        let tags: Vec<String> = e.vlan.iter().map(u16::to_string).collect();
        s.push_str(&format!(" vlan={}", tags.join(",")));
    }
    s.push_str(&format!(" len={}", e.len));
    if let (Some(role), Some(service)) = (&e.role, &e.service) {
        s.push_str(&format!(" {role}/{service}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use portguard::events::record::EventJson;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pg-events-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        d
    }

    fn record(dport: u16) -> EventRecord {
        EventRecord {
            event: EventJson {
                time: "2025-01-01T00:00:00Z".to_string(),
                iface: "pg0".to_string(),
                verdict: "drop".to_string(),
                reason: "port_not_allowed".to_string(),
                proto: "udp".to_string(),
                src: None,
                dst: None,
                sport: None,
                dport: Some(dport),
                vlan: Vec::new(),
                len: 60,
                role: None,
                service: None,
            },
            time_ns: 1_700_000_000_000_000_000,
            frame: "00".repeat(60),
        }
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .len()
    }

    /// A pcap global header (24 bytes) and records of 16 bytes plus the data.
    const HEADER: u64 = 24;
    const RECORD: u64 = 16 + 60;

    #[test]
    fn the_pcap_is_a_valid_file_from_the_start_and_buffered_until_a_flush() {
        let dir = scratch("buffered");
        let path = dir.join("e.pcap");
        let mut p = Pcap::create(&path, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(len(&path), HEADER, "the header is written through at once");
        p.write(&record(161)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(len(&path), HEADER, "a packet waits in the buffer");
        p.flush().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(len(&path), HEADER + RECORD, "the flush writes it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn packet_buffered_writes_every_packet_through() {
        let dir = scratch("per-packet");
        let path = dir.join("e.pcap");
        let mut p = Pcap::create(&path, true).unwrap_or_else(|e| panic!("{e}"));
        for n in 1..=3 {
            p.write(&record(161)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(len(&path), HEADER + n * RECORD, "after packet {n}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn packet_buffered_needs_a_pcap() {
        use clap::Parser as _;
        let parse = |argv: &[&str]| {
            crate::cli::Cli::try_parse_from(
                ["portguard", "events", "--iface", "pg0"]
                    .iter()
                    .chain(argv.iter())
                    .copied(),
            )
        };
        assert!(
            parse(&["-U"]).is_err(),
            "-U without --pcap should be refused"
        );
        let cli = parse(&["--follow", "--pcap", "f.pcap", "-U"]).expect("--pcap with -U");
        match cli.command {
            crate::cli::Command::Events(a) => assert!(a.packet_buffered, "-U sets it"),
            other => panic!("parsed as {other:?}"),
        }
    }
}
