//! `portguard events`: the running daemon's packet events, read over its
//! root-only control socket, as text, JSON Lines and/or a pcap file.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use crate::{
    cli::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, EventFormat, EventsArgs},
    events::{
        control::{self, ErrorLine, Request},
        record::EventRecord,
    },
};

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
            ClientError::NotRunning { .. } => EXIT_USAGE,
            _ => EXIT_FAILURE,
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
    // Any leg of an appliance reaches the instance's one socket.
    let path = control::socket_path(run_dir, &crate::state::instance_of(run_dir, iface));
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
        .set_read_timeout((!follow).then_some(Duration::from_secs(10)))
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
    Ok(BufReader::new(stream))
}

/// One answer line: an error line from the daemon becomes an error.
pub fn parse_line<T: serde::de::DeserializeOwned>(line: &str) -> Result<T, ClientError> {
    if let Ok(e) = serde_json::from_str::<ErrorLine>(line) {
        return Err(ClientError::Daemon(e.error));
    }
    serde_json::from_str(line).map_err(|e| ClientError::Output(format!("bad answer {line:?}: {e}")))
}

pub fn events(args: EventsArgs) -> u8 {
    match run(&args) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("portguard events --iface {}: {e}", args.iface);
            e.exit_code()
        }
    }
}

fn run(args: &EventsArgs) -> Result<(), ClientError> {
    let mut pcap = match &args.pcap {
        Some(p) => {
            let file = File::create(p)
                .map_err(|e| ClientError::Output(format!("--pcap {}: {e}", p.display())))?;
            let header = PcapHeader {
                snaplen: classifier_common::EVENT_SNAPLEN as u32,
                datalink: DataLink::ETHERNET,
                ..PcapHeader::default()
            };
            Some(
                PcapWriter::with_header(BufWriter::new(file), header)
                    .map_err(|e| ClientError::Output(format!("--pcap {}: {e}", p.display())))?,
            )
        }
        None => None,
    };
    let req = Request::Events {
        // With --follow, --count bounds what is printed, not the snapshot.
        count: if args.follow { None } else { args.count },
        verdict: args.verdict.map(|v| v.name().to_string()),
        follow: args.follow,
    };
    let reader = request(&args.run_dir, &args.iface, &req)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| ClientError::Output(e.to_string()))?;
        let r: EventRecord = parse_line(&line)?;
        let text = match args.format {
            EventFormat::Json => serde_json::to_string(&r.event).unwrap_or_default(),
            EventFormat::Text => text_line(&r),
        };
        if writeln!(out, "{text}").is_err() {
            // stdout closed (a pipe into `head`): done.
            break;
        }
        if let Some(w) = pcap.as_mut() {
            let data = r.frame_bytes();
            let packet = PcapPacket::new(Duration::from_nanos(r.time_ns), r.event.len, &data);
            w.write_packet(&packet)
                .map_err(|e| ClientError::Output(format!("writing the pcap: {e}")))?;
        }
        if args.count.is_some_and(|max| n + 1 >= max) {
            break;
        }
        if args.follow {
            let _ = out.flush();
        }
    }
    if let Some(w) = pcap {
        w.into_writer()
            .flush()
            .map_err(|e| ClientError::Output(format!("writing the pcap: {e}")))?;
    }
    Ok(())
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
