//! `GET /metrics` in OpenMetrics text, built at scrape time from the per-CPU
//! counters (summed) so that nothing is cached that could drift.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Mutex,
};

use crate::commands::run::Daemon;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    iface: String,
    role: String,
    service: String,
    proto: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    iface: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    iface: String,
    mode: String,
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders every metric of ../shared/design.md for one daemon.
pub fn render(daemon: &mut Daemon) -> Result<String, String> {
    let snap = daemon.snapshot().map_err(|e| e.to_string())?;
    let mut registry = Registry::default();

    let packets = Family::<PacketLabels, Counter>::default();
    let bytes = Family::<PacketLabels, Counter>::default();
    for (k, c) in &snap.rows {
        let labels = PacketLabels {
            iface: daemon.iface.clone(),
            role: k.role.clone(),
            service: k.service.clone(),
            proto: k.proto.clone(),
            verdict: k.verdict.to_string(),
        };
        packets.get_or_create(&labels).inc_by(c.packets);
        bytes.get_or_create(&labels).inc_by(c.bytes);
    }
    registry.register(
        "portguard_packets",
        "Packets by role, service, protocol and verdict",
        packets,
    );
    registry.register(
        "portguard_bytes",
        "Bytes by role, service, protocol and verdict",
        bytes,
    );

    let drops = Family::<DropLabels, Counter>::default();
    for (reason, c) in &snap.drops {
        drops
            .get_or_create(&DropLabels {
                iface: daemon.iface.clone(),
                reason: (*reason).to_string(),
            })
            .inc_by(c.packets);
    }
    registry.register(
        "portguard_drops",
        "Packets dropped (or, in monitor mode, that would be) by reason",
        drops,
    );

    let rules = Family::<RoleLabels, Gauge>::default();
    for (role, n) in &daemon.rules_per_role {
        rules
            .get_or_create(&RoleLabels { role: role.clone() })
            .set(*n as i64);
    }
    registry.register("portguard_catalog_rules", "Rules in force per role", rules);

    let generation = Gauge::<i64>::default();
    generation.set(i64::from(daemon.catalog_generation));
    registry.register(
        "portguard_catalog_generation",
        "Catalog generation in force",
        generation,
    );

    let reloads = Family::<ResultLabels, Counter>::default();
    reloads
        .get_or_create(&ResultLabels {
            result: "ok".into(),
        })
        .inc_by(daemon.reloads.ok);
    reloads
        .get_or_create(&ResultLabels {
            result: "error".into(),
        })
        .inc_by(daemon.reloads.error);
    registry.register("portguard_reloads", "Catalog reloads by result", reloads);

    let attached = Family::<AttachLabels, Gauge>::default();
    attached
        .get_or_create(&AttachLabels {
            iface: daemon.iface.clone(),
            mode: daemon.xdp_mode.to_string(),
        })
        .set(1);
    registry.register(
        "portguard_xdp_attached",
        "1 while the XDP program is attached",
        attached,
    );

    crate::events::metrics::register(&mut registry, daemon.events.shared());

    let mut out = String::new();
    encode(&mut out, &registry).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A deliberately small HTTP/1.1 responder: one request per connection,
/// `GET /metrics` only. Prometheus needs nothing more.
pub async fn serve(listener: TcpListener, daemon: Arc<Mutex<Daemon>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut used = 0;
            // Read until the end of the headers (or the buffer is full).
            while used < buf.len() {
                match stream.read(&mut buf[used..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => used += n,
                }
                if buf[..used].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let request = String::from_utf8_lossy(&buf[..used]);
            let mut parts = request.split_whitespace();
            let (status, ctype, body) = match (parts.next(), parts.next()) {
                (Some("GET"), Some(path))
                    if path == "/metrics" || path.starts_with("/metrics?") =>
                {
                    let mut d = daemon.lock().await;
                    match render(&mut d) {
                        Ok(body) => ("200 OK", CONTENT_TYPE, body),
                        Err(e) => (
                            "500 Internal Server Error",
                            "text/plain",
                            format!("reading counters: {e}\n"),
                        ),
                    }
                }
                (Some("GET"), Some(_)) => {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                }
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_string(),
                ),
            };
            let mut resp = String::new();
            let _ = write!(
                resp,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
