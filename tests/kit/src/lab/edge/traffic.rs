//! The edge lab's traffic over plain sockets: the cases, and the media
//! relay out of the A/V Edge with its answers and the unsolicited look-alikes.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{CASES, Expect, FAMILIES, Host, Refusal, Row, Topology};
use crate::{
    lab::{
        Proto,
        send::{PACE, UDP_DATAGRAMS, datagrams, listen, send_case},
    },
    netns::{in_netns, thread_in},
};

/// The A/V Edge's media port and its internet peer's, for the relay over
/// plain sockets: the peer's port is in 50000-59999 because the outbound rule
/// matches the destination port.
pub(super) const MEDIA_EDGE_PORT: u16 = 50_000;
pub(super) const MEDIA_PEER_PORT: u16 = 50_010;
/// The source port of the unsolicited datagrams to the A/V Edge's media
/// port: not the port the Edge talked to, so no flow covers them.
const UNSOLICITED_PORT: u16 = 40_000;
/// The `what` of the media rows, which the counter checks pick out.
pub(super) const MEDIA_OUT: &str = "media relay out of the A/V Edge";
pub(super) const MEDIA_ANSWERS: &str = "the answers to it (established)";
pub(super) const MEDIA_UNSOLICITED: &str = "unsolicited media to the A/V Edge";
pub(super) const MEDIA_OTHER_PORT: &str = "the answering peer to another Edge port";

/// The rows [`media_relay`] adds per family, after the [`CASES`].
pub const MEDIA_ROWS: usize = 4;

/// Every case in both families at once: the listeners first (one per
/// address, port and protocol; cases that differ only in their sender share
/// it, and each row counts what came from its sender), then one sending
/// thread per case in the sender's namespace (a forbidden TCP attempt waits
/// out its timeout, so they run side by side).
pub(super) fn socket_cases(topo: &Topology) -> Result<Vec<Row>> {
    let mut seen = BTreeSet::new();
    for c in &CASES {
        if !seen.insert((c.from, c.to, c.port, c.proto)) {
            bail!(
                "two cases send from {} to {} {} {}",
                c.from.name(),
                c.to.name(),
                c.proto.name(),
                c.port
            );
        }
    }
    let mut listeners = BTreeMap::new();
    for family in FAMILIES {
        for c in &CASES {
            let at = SocketAddr::new(c.to.ip(family), c.port);
            if let Entry::Vacant(e) = listeners.entry((at, c.proto)) {
                e.insert(listen(topo.ns(c.to.side()), c.proto, at)?);
            }
        }
    }
    let mut senders: Vec<JoinHandle<std::io::Result<u32>>> = Vec::new();
    for family in FAMILIES {
        for c in &CASES {
            let from = c.from.ip(family);
            let to = SocketAddr::new(c.to.ip(family), c.port);
            let (proto, payload) = (c.proto, c.payload);
            senders.push(thread_in(topo.ns(c.from.side()), move || {
                send_case(proto, payload, from, to)
            })?);
        }
    }
    let sent: Vec<u32> = senders
        .into_iter()
        .map(|h| h.join().ok().and_then(Result::ok).unwrap_or(0))
        .collect();
    // Let the last packets land before the listeners stop.
    std::thread::sleep(Duration::from_millis(300));
    for l in listeners.values_mut() {
        l.stop();
    }
    let mut rows = Vec::new();
    let mut sent = sent.into_iter();
    for family in FAMILIES {
        for c in &CASES {
            let at = SocketAddr::new(c.to.ip(family), c.port);
            let received = listeners
                .get(&(at, c.proto))
                .map_or(0, |l| l.count_from(c.from.ip(family)));
            rows.push(Row::from_case(
                family,
                c,
                sent.next().unwrap_or(0),
                received,
            ));
        }
    }
    Ok(rows)
}

/// Media out of the A/V Edge over plain sockets, per family: the Edge sends
/// from its media port to an internet peer that echoes every datagram; then
/// the peer's host sends unsolicited datagrams to the same media port from
/// another port, and the peer from its answering port to another media port
/// of the Edge. Four rows: out, answers, and the two unsolicited ones.
pub(super) fn media_relay(topo: &Topology) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for family in FAMILIES {
        let edge_at = SocketAddr::new(Host::AvEdge.ip(family), MEDIA_EDGE_PORT);
        let peer_at = SocketAddr::new(Host::Internet.ip(family), MEDIA_PEER_PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let (echoed, answers, unsolicited) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
        );
        let peer = in_netns(&topo.internet, || UdpSocket::bind(peer_at))?
            .with_context(|| format!("binding the media peer {peer_at}"))?;
        let edge = in_netns(&topo.dmz, || UdpSocket::bind(edge_at))?
            .with_context(|| format!("binding the A/V Edge media port {edge_at}"))?;
        let intruder = in_netns(&topo.internet, || {
            UdpSocket::bind(SocketAddr::new(Host::Internet.ip(family), UNSOLICITED_PORT))
        })?
        .context("binding the unsolicited sender")?;
        // A media port the Edge never sent from: the exchange must not open it.
        let other_at = SocketAddr::new(Host::AvEdge.ip(family), MEDIA_EDGE_PORT + 1);
        let other = listen(&topo.dmz, Proto::Udp, other_at)?;
        for s in [&peer, &edge] {
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
        }
        let peer_tx = peer.try_clone()?;
        let echo = {
            let (stop, echoed) = (stop.clone(), echoed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = peer.recv_from(&mut buf)
                        && peer.send_to(&buf[..n], from).is_ok()
                    {
                        echoed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let edge_rx = edge.try_clone()?;
        let receiver = {
            let (stop, answers, unsolicited) = (stop.clone(), answers.clone(), unsolicited.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((_, from)) = edge_rx.recv_from(&mut buf) {
                        let counter = if from == peer_at {
                            &answers
                        } else {
                            &unsolicited
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let send = |sock: &UdpSocket, to: SocketAddr, what: &str| -> u32 {
            datagrams(sock, to, UDP_DATAGRAMS, PACE, |i| {
                format!("{what} {i}").into_bytes()
            })
        };
        let out = send(&edge, peer_at, "media");
        std::thread::sleep(Duration::from_millis(200));
        // After the exchange, so that a flow opened by it would show.
        let intruded = send(&intruder, edge_at, "unsolicited");
        let to_other = send(&peer_tx, other_at, "other port");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let _ = echo.join();
        let _ = receiver.join();
        let echoed = echoed.load(Ordering::SeqCst);
        let media = |from, to, port, what, expect, sent, received| Row {
            family,
            proto: Proto::Udp,
            from,
            to,
            port,
            what,
            expect,
            sent,
            received,
        };
        rows.extend([
            media(
                Host::AvEdge,
                Host::Internet,
                MEDIA_PEER_PORT,
                MEDIA_OUT,
                Expect::Allowed,
                out,
                echoed,
            ),
            media(
                Host::Internet,
                Host::AvEdge,
                MEDIA_EDGE_PORT,
                MEDIA_ANSWERS,
                Expect::Allowed,
                echoed,
                answers.load(Ordering::SeqCst),
            ),
            media(
                Host::Internet,
                Host::AvEdge,
                MEDIA_EDGE_PORT,
                MEDIA_UNSOLICITED,
                Expect::Forbidden(Refusal::Port),
                intruded,
                unsolicited.load(Ordering::SeqCst),
            ),
            media(
                Host::Internet,
                Host::AvEdge,
                MEDIA_EDGE_PORT + 1,
                MEDIA_OTHER_PORT,
                Expect::Forbidden(Refusal::Port),
                to_other,
                other.finish().count,
            ),
        ]);
    }
    Ok(rows)
}
