//! The appliance's part of the attack scenario: the plants, then idle
//! connections through the SYN floods (new ones opened while they run),
//! the first-fragment floods, and `kill -9` with `run --clean-start`.

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{
    BIG_DATAGRAM, ConnRow, DMZ_LEG, EXT_LEG, FRAGMENT_FLOOD, Firewall, FloodRow, FragmentRow,
    IDLE_FLOWS, Instance, LEGS, Mode, ONE_SOURCE_FLOOD, ONE_SOURCE_FRAGMENT_RATE,
    ONE_SOURCE_FRAGMENTS, Options, Report, SYN_FLOOD_V4, SYN_FLOOD_V6, Wire, counted,
    flood::{self, Flood, Kind, Sources},
    idle::{Conn, Speaker, check_all, udp_expecting_drop},
    load_export, orphans, plants, prepare, progress,
};
use crate::{
    lab::edge::{DMZ_HOST_IF, FAMILIES, Family, Host, INET_IF, Topology, portguard_args_on},
    lab::{
        Proto, check_interrupted,
        send::{datagrams, listen},
    },
    netns::in_netns,
};

/// The appliance: plants, and with `floods` the rest.
pub(super) fn run(opts: &Options<'_>, report: &mut Report) -> Result<()> {
    progress(opts, "appliance: namespaces");
    let topo = Topology::build(LEGS)?;
    prepare(&topo)?;
    report.namespaces.extend([
        topo.internet.name().to_string(),
        topo.appliance.name().to_string(),
        topo.dmz.name().to_string(),
    ]);
    let wire = Arc::new(Wire::new(
        &topo.internet,
        INET_IF,
        &topo.appliance,
        LEGS.ext,
    )?);
    let args = portguard_args_on(LEGS);
    let mut instance = match opts.firewall {
        Firewall::Portguard => {
            progress(opts, "appliance: portguard starts on both legs");
            Some(Instance::start(
                &topo.appliance,
                opts.bin,
                args.clone(),
                vec![LEGS.ext, LEGS.dmz],
                opts.interrupted,
            )?)
        }
        Firewall::Nftables => {
            let mut export = vec!["--appliance".to_string()];
            export.extend(args.iter().skip_while(|a| *a != "--profile").cloned());
            // `run`'s own flags after the profiles are not the export's.
            let keep = export
                .iter()
                .position(|a| a == "--xdp-mode")
                .unwrap_or(export.len());
            export.truncate(keep);
            load_export(&topo.appliance, opts.bin, &export)?;
            None
        }
        Firewall::None => None,
    };

    let mut conns = if opts.floods && instance.is_some() {
        progress(opts, "appliance: idle connections open");
        Some(Conns::open(&topo)?)
    } else {
        None
    };
    if let Some(c) = &mut conns {
        report.conns.extend(c.confirm(Mode::Appliance)?);
    }

    progress(opts, "appliance: plants");
    let env = plants::Env {
        mode: Mode::Appliance,
        attacker_ns: &topo.internet,
        victim_ns: &topo.dmz,
        capture_if: DMZ_HOST_IF,
        wire: &wire,
        subnet: 1,
        router: Some((&topo.appliance, LEGS)),
    };
    report.plants.extend(plants::run(&env, &plants::APPLIANCE)?);
    check_interrupted(opts.interrupted)?;

    let (Some(instance_ref), Some(conns)) = (instance.as_mut(), conns.as_mut()) else {
        return Ok(());
    };
    let ns = &topo.appliance;
    report
        .conns
        .extend(conns.check(Mode::Appliance, "after the plants", Speaker::Answer));
    let (_, before) = instance_ref.stats(ns, opts.bin)?;
    report.checks.push((
        before.confirmed.entries >= IDLE_FLOWS,
        format!(
            "before the floods the idle connections are confirmed: {} confirmed entries >= {IDLE_FLOWS}",
            before.confirmed.entries
        ),
    ));

    let floods = [
        (
            "spoofed SYNs to the Access Edge 5061, IPv4, many sources",
            Flood {
                family: Family::V4,
                sources: Sources::Many,
                kind: Kind::Syn,
                to: SocketAddr::new(Host::AccessEdge.ip(Family::V4), 5061),
                frames: SYN_FLOOD_V4,
                pace: None,
            },
        ),
        (
            "spoofed SYNs to the Access Edge 5061, IPv6, many sources",
            Flood {
                family: Family::V6,
                sources: Sources::Many,
                kind: Kind::Syn,
                to: SocketAddr::new(Host::AccessEdge.ip(Family::V6), 5061),
                frames: SYN_FLOOD_V6,
                pace: None,
            },
        ),
        (
            "SYNs to the Access Edge 5061 from one IPv4 source, random ports",
            Flood {
                family: Family::V4,
                sources: Sources::One,
                kind: Kind::Syn,
                to: SocketAddr::new(Host::AccessEdge.ip(Family::V4), 5061),
                frames: ONE_SOURCE_FLOOD,
                pace: None,
            },
        ),
        (
            "SYNs to the Access Edge 5061 from one IPv6 source, random ports",
            Flood {
                family: Family::V6,
                sources: Sources::One,
                kind: Kind::Syn,
                to: SocketAddr::new(Host::AccessEdge.ip(Family::V6), 5061),
                frames: ONE_SOURCE_FLOOD,
                pace: None,
            },
        ),
    ];
    for (name, flood) in floods {
        progress(opts, &format!("appliance: {name}"));
        let row = flood_phase(opts, &topo, instance_ref, conns, &wire, name, flood, report)?;
        report.checks.push(match flood.sources {
            Sources::Many => (
                row.unconfirmed_evictions > 0,
                format!(
                    "{name}: the unconfirmed table turned over ({} evictions)",
                    row.unconfirmed_evictions
                ),
            ),
            Sources::One => (
                row.unconfirmed_refusals > 0,
                format!(
                    "{name}: the source's share ran out ({} refusals)",
                    row.unconfirmed_refusals
                ),
            ),
        });
        if flood.sources == Sources::Many {
            report.checks.push((
                row.counted >= 250_000 && row.source_endpoints >= 250_000,
                format!(
                    "{name}: at least 250,000 distinct sources reached portguard ({} source addresses, {} address and port pairs, {} frames counted on {EXT_LEG})",
                    row.source_addresses, row.source_endpoints, row.counted
                ),
            ));
        }
        report.checks.push(row.confirmed_stayed());
        report.floods.push(row);
        check_interrupted(opts.interrupted)?;
    }

    progress(opts, "appliance: fragment floods");
    fragments(opts, &topo, instance_ref, &wire, report)?;
    report.conns.extend(conns.check(
        Mode::Appliance,
        "after the fragment floods",
        Speaker::Answer,
    ));
    check_interrupted(opts.interrupted)?;

    progress(opts, "appliance: kill -9, then run --clean-start");
    let (text, _) = instance_ref.stats(ns, opts.bin)?;
    report.stats = text;
    instance_ref.kill9()?;
    instance_ref.spawn(ns, opts.bin, &["--clean-start"], opts.interrupted)?;
    let (_, fresh) = instance_ref.stats(ns, opts.bin)?;
    report.checks.push((
        fresh.confirmed.entries + fresh.unconfirmed.entries < IDLE_FLOWS,
        format!(
            "run --clean-start began with an empty flow table ({} confirmed, {} unconfirmed entries)",
            fresh.confirmed.entries, fresh.unconfirmed.entries
        ),
    ));
    let phase = "after kill -9 and run --clean-start";
    // Only what the rule side sends makes an entry, so the answering side
    // alone gets nowhere until the rule side speaks again (as with
    // conntrack failing over without conntrackd); shown on the UDP flows,
    // where a dropped message leaves nothing behind to arrive later.
    report
        .conns
        .extend(conns.check_udp_expecting_drop(Mode::Appliance, phase));
    report
        .conns
        .extend(conns.check(Mode::Appliance, phase, Speaker::Rule));
    report
        .conns
        .extend(conns.check(Mode::Appliance, phase, Speaker::Answer));

    let (summary, detached) = instance_ref.stop(ns)?;
    report.checks.push((
        detached,
        format!("no XDP program left on {EXT_LEG} or {DMZ_LEG} after SIGINT"),
    ));
    if summary.is_empty() {
        report
            .checks
            .push((false, "portguard printed no summary on SIGINT".into()));
    }
    drop(instance.take());
    Ok(())
}

/// One flood with the idle connections waiting and new ones opened while
/// it runs; then the idle ones, the answering side first.
#[expect(clippy::too_many_arguments, reason = "one phase's whole context")]
fn flood_phase(
    opts: &Options<'_>,
    topo: &Topology,
    instance: &Instance,
    conns: &mut Conns,
    wire: &Arc<Wire>,
    name: &str,
    flood: Flood,
    report: &mut Report,
) -> Result<FloodRow> {
    let ns = &topo.appliance;
    let (_, before) = instance.stats(ns, opts.bin)?;
    let counted_before = counted(ns, EXT_LEG, "tcp")?;
    let running = flood::start(wire.clone(), flood);
    running.wait_for(0.2, Duration::from_secs(20));
    let during = format!("during: {name}");
    for family in FAMILIES {
        report
            .conns
            .extend(conns.fresh(topo, family, &during, &running));
    }
    let took = running.finish()?;
    std::thread::sleep(Duration::from_millis(300));
    let (_, after) = instance.stats(ns, opts.bin)?;
    let counted_after = counted(ns, EXT_LEG, "tcp")?;
    report
        .conns
        .extend(conns.check(Mode::Appliance, &format!("after: {name}"), Speaker::Answer));
    Ok(FloodRow::measured(
        Mode::Appliance,
        name,
        &flood,
        took,
        counted_after.saturating_sub(counted_before),
        (&before, &after),
    ))
}

/// First-fragment floods with legitimate fragmented datagrams crossing
/// during them, per family: from many sources to a closed port (dropped,
/// so they take no fragment entry), then from one source to an allowed
/// port (passed, and remembered only up to the source's share).
fn fragments(
    opts: &Options<'_>,
    topo: &Topology,
    instance: &Instance,
    wire: &Arc<Wire>,
    report: &mut Report,
) -> Result<()> {
    let ns = &topo.appliance;
    for family in FAMILIES {
        let av = SocketAddr::new(Host::AvEdge.ip(family), 3478);
        for (what, flood) in [
            (
                "first fragments from many sources to the Access Edge's closed 161",
                Flood {
                    family,
                    sources: Sources::Many,
                    kind: Kind::FirstFragment,
                    to: SocketAddr::new(Host::AccessEdge.ip(family), 161),
                    frames: FRAGMENT_FLOOD,
                    pace: None,
                },
            ),
            (
                "first fragments from one source to the A/V Edge's allowed 3478",
                Flood {
                    family,
                    sources: Sources::One,
                    kind: Kind::FirstFragment,
                    to: av,
                    frames: ONE_SOURCE_FRAGMENTS,
                    // These pass (their port is allowed) and the Edge's
                    // kernel takes each into its reassembly: paced, so that
                    // its input queue keeps up and what the scenario
                    // measures is portguard, not the Edge's backlog.
                    pace: Some(ONE_SOURCE_FRAGMENT_RATE),
                },
            ),
        ] {
            let listener = listen(&topo.dmz, Proto::Udp, av)?;
            let (_, before) = instance.stats(ns, opts.bin)?;
            let orphans_before = orphans(ns)?;
            let running = flood::start(wire.clone(), flood);
            running.wait_for(0.1, Duration::from_secs(20));
            let from = Host::Internet.ip(family);
            let (sent, bytes_sent) =
                in_netns(&topo.internet, || -> std::io::Result<(u32, u64)> {
                    let sock = std::net::UdpSocket::bind(SocketAddr::new(from, 0))?;
                    let sent = datagrams(&sock, av, 20, Duration::from_millis(5), |_| {
                        vec![0x5a; BIG_DATAGRAM]
                    });
                    Ok((sent, u64::from(sent) * BIG_DATAGRAM as u64))
                })??;
            running.finish()?;
            std::thread::sleep(Duration::from_millis(300));
            let (_, after) = instance.stats(ns, opts.bin)?;
            let orphaned = orphans(ns)?.saturating_sub(orphans_before);
            report.checks.push((
                orphaned == 0,
                format!(
                    "{} {what}: portguard dropped {orphaned} later fragments as orphans on {EXT_LEG}",
                    family.name()
                ),
            ));
            let got = listener.counts();
            let received = listener.count_from(from);
            drop(listener);
            if flood.sources == Sources::Many {
                // Only what passed may take an entry: the legitimate
                // datagrams' first fragments, not the flood's.
                let grown = after
                    .fragments
                    .entries
                    .saturating_sub(before.fragments.entries);
                report.checks.push((
                    grown <= u64::from(sent),
                    format!(
                        "{} {what}: the fragment table grew by {grown}, at most the {sent} legitimate datagrams",
                        family.name()
                    ),
                ));
            } else {
                let refused = after
                    .fragments
                    .refusals
                    .saturating_sub(before.fragments.refusals);
                report.checks.push((
                    refused > 0,
                    format!(
                        "{} {what}: the source's fragment share ran out ({refused} refusals)",
                        family.name()
                    ),
                ));
            }
            report.fragments.push(FragmentRow {
                family,
                what: what.to_string(),
                flood_frames: flood.frames,
                sent,
                received,
                bytes_sent,
                bytes_received: got.bytes,
            });
        }
    }
    Ok(())
}

/// The appliance's idle connections and the listeners new ones open on.
struct Conns {
    /// Per family: the Access Edge's 5061, the internet server's 5061.
    edge_5061: Vec<(Family, TcpListener)>,
    internet_5061: Vec<(Family, TcpListener)>,
    idle: Vec<Conn>,
    /// Local ports for the connections opened during the floods.
    next_port: u16,
}

/// Source ports of the lab's own connections: outside the ephemeral range,
/// so that no catalog row (the A/V Edge's 50000-59999) covers them by
/// chance.
const IDLE_PORT: u16 = 40_300;

impl Conns {
    fn open(topo: &Topology) -> Result<Conns> {
        let mut c = Conns {
            edge_5061: Vec::new(),
            internet_5061: Vec::new(),
            idle: Vec::new(),
            next_port: IDLE_PORT + 100,
        };
        for (k, family) in FAMILIES.into_iter().enumerate() {
            let edge = SocketAddr::new(Host::AccessEdge.ip(family), 5061);
            let inet = SocketAddr::new(Host::Internet.ip(family), 5061);
            let edge_l = in_netns(&topo.dmz, || TcpListener::bind(edge))?
                .with_context(|| format!("binding {edge}"))?;
            let inet_l = in_netns(&topo.internet, || TcpListener::bind(inet))?
                .with_context(|| format!("binding {inet}"))?;
            let port = IDLE_PORT + 10 * k as u16;
            c.idle.push(Conn::tcp(
                format!("TCP internet -> Access Edge 5061 ({})", family.name()),
                ("the internet client", "the Access Edge"),
                &topo.internet,
                SocketAddr::new(Host::Internet.ip(family), port),
                &edge_l,
            )?);
            c.idle.push(Conn::tcp(
                format!("TCP Access Edge -> internet 5061 ({})", family.name()),
                ("the Access Edge", "the internet server"),
                &topo.dmz,
                SocketAddr::new(Host::AccessEdge.ip(family), port + 1),
                &inet_l,
            )?);
            c.idle.push(Conn::udp(
                format!("UDP A/V Edge 50000 <-> internet 50010 ({})", family.name()),
                ("the A/V Edge", "the internet peer"),
                (&topo.dmz, SocketAddr::new(Host::AvEdge.ip(family), 50_000)),
                (
                    &topo.internet,
                    SocketAddr::new(Host::Internet.ip(family), 50_010),
                ),
            )?);
            c.edge_5061.push((family, edge_l));
            c.internet_5061.push((family, inet_l));
        }
        Ok(c)
    }

    /// The first exchanges, which confirm the entries: TCP by the
    /// answerer's first segment past the handshake; UDP by an answer at
    /// least 2 s after the flow began, after an earlier one.
    fn confirm(&mut self, mode: Mode) -> Result<Vec<ConnRow>> {
        let mut rows = check_all(
            &mut self.idle,
            mode,
            "opened (the rule side first)",
            Speaker::Rule,
        );
        std::thread::sleep(Duration::from_millis(2200));
        rows.extend(check_all(
            &mut self.idle,
            mode,
            "2 s later, which confirms the UDP flows",
            Speaker::Rule,
        ));
        Ok(rows)
    }

    fn check(&mut self, mode: Mode, phase: &str, first: Speaker) -> Vec<ConnRow> {
        check_all(&mut self.idle, mode, phase, first)
    }

    fn check_udp_expecting_drop(&mut self, mode: Mode, phase: &str) -> Vec<ConnRow> {
        udp_expecting_drop(&mut self.idle, mode, phase)
    }

    /// New connections while a flood runs, one each way in `family`, a
    /// message each way with the answering side first.
    fn fresh(
        &mut self,
        topo: &Topology,
        family: Family,
        phase: &str,
        running: &flood::Running,
    ) -> Vec<ConnRow> {
        let mut rows = Vec::new();
        let port = self.next_port;
        self.next_port += 2;
        let edge_l = self.edge_5061.iter().find(|(f, _)| *f == family);
        let inet_l = self.internet_5061.iter().find(|(f, _)| *f == family);
        let attempts = [
            (
                format!("new TCP internet -> Access Edge 5061 ({})", family.name()),
                ("the internet client", "the Access Edge"),
                &topo.internet,
                SocketAddr::new(Host::Internet.ip(family), port),
                edge_l,
            ),
            (
                format!("new TCP Access Edge -> internet 5061 ({})", family.name()),
                ("the Access Edge", "the internet server"),
                &topo.dmz,
                SocketAddr::new(Host::AccessEdge.ip(family), port + 1),
                inet_l,
            ),
        ];
        for (what, names, from_ns, from, listener) in attempts {
            let sent_then = running.sent.load(std::sync::atomic::Ordering::SeqCst);
            // The client speaks first, as TCP clients do (and a segment the
            // loaded Edge drops is sent again); then the other side.
            let result = listener
                .context("no listener")
                .and_then(|(_, l)| Conn::tcp(what.clone(), names, from_ns, from, l))
                .map_err(|e| format!("{e:#}"))
                .and_then(|mut c| {
                    c.exchange(Speaker::Rule)?;
                    c.exchange(Speaker::Answer)
                });
            let still = running.running();
            rows.push(ConnRow {
                mode: Mode::Appliance,
                phase: phase.to_string(),
                what,
                first: format!("{}, then {}", names.0, names.1),
                expected: true,
                worked: result.is_ok(),
                detail: match result {
                    Ok(()) => format!(
                        "opened after {sent_then} of {} frames{}",
                        running.total,
                        if still {
                            ", the flood still running when done"
                        } else {
                            ", the flood over when done"
                        }
                    ),
                    Err(e) => e,
                },
            });
        }
        rows
    }
}
