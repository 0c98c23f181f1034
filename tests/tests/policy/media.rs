//! Media rules (`payload = "media"`) in the real XDP program
//! (`BPF_PROG_TEST_RUN`): real media from real tools passes (0 false
//! drops), reflection answers and junk are refused with their reason and
//! counted under the rule, an answer to a recorded flow still passes, and
//! the STUN budget holds against one source and a spoofed /16 while a
//! legitimate client and established media go on. The payloads are in
//! tests/data/media (their sources in extract.sh there); userspace's
//! `media::classify_payload` must agree with the kernel on every one.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use classifier_common::{Reason, Verdict, decode_media_counter, media};
use portguard::policy::{MediaCheck, Mgmt, Placement, PolicySpec, Prefix, StunBudget};
use portguard_testsupport::{
    frames::{ETH_P_8021Q, Packet},
    kernel::{Kernel, pin_this_thread_to_cpu0},
    spec::lab_spec,
};

const CLIENT: &str = "198.18.0.1";
const SERVER: &str = "198.18.0.2";
const CLIENT6: &str = "2001:db8::1";
const SERVER6: &str = "2001:db8::2";
/// The lab server's media ports: the client's 3478 and its media range.
const MEDIA_PORTS: [u16; 2] = [3478, 50_000];

/// One datagram of tests/data/media.
struct Datagram {
    source: String,
    sport: u16,
    payload: Vec<u8>,
}

fn load(name: &str) -> Vec<Datagram> {
    let path = format!("{}/data/media/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 4, "{path}:{}: expected 4 fields", i + 1);
            Datagram {
                source: format!("{}:{} ({})", name, i + 1, f[0]),
                sport: f[1]
                    .parse()
                    .unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1)),
                payload: portguard_testsupport::kernel::unhex(f[3])
                    .unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1)),
            }
        })
        .collect()
}

/// The lab server with the payload check as `check`.
fn lab(check: MediaCheck, monitor: bool) -> PolicySpec {
    PolicySpec {
        media_check: check,
        monitor,
        ..lab_spec()
    }
}

/// No STUN budget: the real captures hold more requests from one source
/// than a budget allows at once (the budget has a test of its own).
fn unlimited(spec: PolicySpec) -> PolicySpec {
    PolicySpec {
        stun_budget: StunBudget {
            source_rate: 0,
            source_burst: 1,
            net_rate: 0,
            net_burst: 1,
        },
        ..spec
    }
}

/// `payload` from `sport` to `dport` in the four shapes every case is run
/// in: IPv4, IPv6, and each under an 802.1Q tag.
fn frames(sport: u16, dport: u16, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (src, dst, fam) in [(CLIENT, SERVER, "IPv4"), (CLIENT6, SERVER6, "IPv6")] {
        let mut p = Packet::udp(src, dst, sport, dport);
        p.payload = payload.to_vec();
        v.push((fam.to_string(), p.clone().build()));
        v.push((format!("{fam} 802.1Q"), p.vlan(ETH_P_8021Q, 10).build()));
    }
    v
}

/// A refusal's reason and verdict from the counter a frame bumped, or
/// `None` when it passed under its rule.
fn refusal(k: &Kernel, counter: u32) -> Option<(Verdict, Reason)> {
    if let Some((_, verdict, reason)) = decode_media_counter(counter) {
        return Some((verdict, reason));
    }
    assert!(
        k.rule(counter).is_some(),
        "counted under {}, neither a rule nor a media refusal",
        k.describe(counter)
    );
    None
}

#[test]
fn real_media_passes_every_media_rule_with_zero_false_drops() {
    let Some(mut k) = Kernel::unpinned("media_real", &unlimited(lab(MediaCheck::Enforce, false)))
    else {
        return;
    };
    let real = load("real.txt");
    assert!(
        real.len() > 300,
        "tests/data/media/real.txt lost its frames"
    );
    let mut runs = 0;
    for d in &real {
        let kind = media::classify_payload(&d.payload);
        assert!(
            kind.is_media(),
            "{}: userspace classifies it as {}",
            d.source,
            kind.name()
        );
        for dport in MEDIA_PORTS {
            for (shape, frame) in frames(d.sport, dport, &d.payload) {
                let (pass, counter) = k.run(&frame);
                assert!(
                    pass && refusal(&k, counter).is_none(),
                    "{} ({}) to {shape} port {dport}: refused, counted as {}",
                    d.source,
                    kind.name(),
                    k.describe(counter)
                );
                runs += 1;
            }
        }
    }
    eprintln!(
        "real media: {} datagrams, {runs} frames, 0 false drops",
        real.len()
    );
}

/// Amplification answers in the shapes their services send, from their
/// real source ports: SSDP, memcached, CLDAP and chargen (the DNS, NTP and
/// SNMP ones come from tcpdump's captures, reflection.txt).
fn crafted_reflections() -> Vec<Datagram> {
    let d = |source: &str, sport: u16, payload: &[u8]| Datagram {
        source: source.to_string(),
        sport,
        payload: payload.to_vec(),
    };
    let mut cldap = vec![
        0x30, 0x84, 0x00, 0x00, 0x0b, 0x8c, 0x02, 0x01, 0x01, 0x64, 0x84,
    ];
    cldap.extend(std::iter::repeat_n(0x41, 200));
    vec![
        d(
            "SSDP answer",
            1900,
            b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nST: upnp:rootdevice\r\nUSN: uuid:1::upnp:rootdevice\r\n\r\n",
        ),
        d(
            "memcached stats answer",
            11_211,
            b"\x00\x01\x00\x00\x00\x01\x00\x00STAT pid 1\r\nSTAT uptime 100\r\nEND\r\n",
        ),
        d("CLDAP searchResEntry", 389, &cldap),
        d("chargen", 19, &(b' '..=b'~').collect::<Vec<u8>>()),
        // An RTP-shaped datagram from a reflection port is refused too: the
        // guard goes by the source port, not the payload.
        d(
            "RTP-shaped from DNS's port",
            53,
            &[0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9, 9],
        ),
    ]
}

#[test]
fn reflection_answers_and_junk_are_refused_with_their_reason_host_mode() {
    let Some(mut k) = Kernel::unpinned("media_junk", &lab(MediaCheck::Enforce, false)) else {
        return;
    };
    let catalog = portguard::catalog::Catalog::embedded();
    let mut reflections = load("reflection.txt");
    reflections.extend(crafted_reflections());
    let (mut dropped, mut total) = (0usize, 0usize);
    for d in &reflections {
        let listed = catalog.reflection_ports.contains(&d.sport);
        for dport in MEDIA_PORTS {
            for (shape, frame) in frames(d.sport, dport, &d.payload) {
                let (pass, counter) = k.run(&frame);
                let got = refusal(&k, counter);
                assert!(
                    !pass && got.is_some(),
                    "{} from port {} to {shape} port {dport} passed as {}",
                    d.source,
                    d.sport,
                    k.describe(counter)
                );
                if listed {
                    assert_eq!(
                        got,
                        Some((Verdict::Drop, Reason::Reflection)),
                        "{} from listed port {} to {shape} {dport}",
                        d.source,
                        d.sport
                    );
                }
                dropped += 1;
                total += 1;
            }
        }
    }
    eprintln!("reflection answers: {dropped} of {total} frames dropped");

    // A UDP port scan (empty datagrams, as nmap sends to most ports) of the
    // media ports, and random bytes from ordinary ports.
    for port in [3478].into_iter().chain(50_000..=50_019) {
        for (shape, frame) in frames(40_000, port, &[]) {
            let (pass, counter) = k.run(&frame);
            assert_eq!(
                (pass, refusal(&k, counter)),
                (false, Some((Verdict::Drop, Reason::NotMedia))),
                "scan probe to {shape} port {port}: {}",
                k.describe(counter)
            );
        }
    }
    let mut seed = 0x5eed_0023_u64;
    let (mut random_dropped, mut random_total) = (0usize, 0usize);
    for i in 0..400 {
        let len = 1 + (i * 37) % 300;
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let expected = media::classify_payload(&payload);
        let (pass, counter) = k.run(&frames(40_000 + i as u16, 50_000, &payload)[0].1);
        assert_eq!(
            pass,
            expected.is_media(),
            "random datagram {i} ({len} bytes, {:02x?}): the kernel and userspace disagree (userspace: {})",
            &payload[..len.min(8)],
            expected.name()
        );
        random_total += 1;
        if !pass {
            random_dropped += 1;
            assert_eq!(
                refusal(&k, counter),
                Some((Verdict::Drop, Reason::NotMedia))
            );
        }
    }
    eprintln!(
        "random bytes: {random_dropped} of {random_total} dropped ({:.0}%); the rest begin as media does",
        100.0 * random_dropped as f64 / random_total as f64
    );
    assert!(
        random_dropped * 2 > random_total,
        "fewer than half of random datagrams dropped: {random_dropped} of {random_total}"
    );
}

#[test]
fn monitor_mode_and_media_check_monitor_count_would_drop_with_the_reason() {
    let junk = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00";
    for (name, spec) in [
        ("--mode monitor", lab(MediaCheck::Enforce, true)),
        ("--media-check monitor", lab(MediaCheck::Monitor, false)),
    ] {
        let Some(mut k) = Kernel::unpinned("media_monitor", &spec) else {
            return;
        };
        for (sport, reason) in [(53, Reason::Reflection), (40_000, Reason::NotMedia)] {
            for (shape, frame) in frames(sport, 3478, junk) {
                let (pass, counter) = k.run(&frame);
                assert_eq!(
                    (pass, refusal(&k, counter)),
                    (true, Some((Verdict::WouldDrop, reason))),
                    "{name}: {shape} from {sport}: {}",
                    k.describe(counter)
                );
            }
        }
        // Other drops keep their verdict under --media-check monitor.
        if !spec.monitor {
            let mut p = Packet::udp(CLIENT, SERVER, 40_000, 161);
            p.payload = junk.to_vec();
            let (pass, _) = k.run(&p.build());
            assert!(!pass, "{name}: UDP 161 must still be dropped");
        }
    }
}

#[test]
fn media_check_off_passes_junk_under_the_rule() {
    let Some(mut k) = Kernel::unpinned("media_off", &lab(MediaCheck::Off, false)) else {
        return;
    };
    for (shape, frame) in frames(53, 3478, b"junk junk junk") {
        let (pass, counter) = k.run(&frame);
        assert!(
            pass && counter < classifier_common::MAX_RULE_SLOTS && k.rule(counter).is_some(),
            "{shape}: with the check off a datagram to 3478 passes under its rule, got {}",
            k.describe(counter)
        );
    }
}

#[test]
fn an_answer_to_a_recorded_flow_is_not_checked() {
    let Some(mut k) = Kernel::new("media_flow", &lab(MediaCheck::Enforce, false)) else {
        return;
    };
    pin_this_thread_to_cpu0();
    // The host asks a DNS server from a port in its media range; the answer
    // (from 53, a reflection port, and no media) passes as established.
    let dns = "198.18.0.53";
    let mut query = Packet::udp(SERVER, dns, 50_001, 53);
    query.payload = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    k.egress(&query.build());
    let mut answer = Packet::udp(dns, SERVER, 53, 50_001);
    answer.payload = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00".to_vec();
    let (pass, counter) = k.run(&answer.build());
    assert!(
        pass && counter
            == classifier_common::reason_counter_index(
                Reason::Established as u32,
                Verdict::Pass as u32,
                classifier_common::PCLASS_UDP
            ),
        "the DNS answer to the host's own query: {}",
        k.describe(counter)
    );
    // The same answer to a port nothing asked from is a reflection.
    let mut stray = Packet::udp(dns, SERVER, 53, 50_002);
    stray.payload = answer.payload.clone();
    let (pass, counter) = k.run(&stray.build());
    assert_eq!(
        (pass, refusal(&k, counter)),
        (false, Some((Verdict::Drop, Reason::Reflection))),
        "an unasked DNS answer: {}",
        k.describe(counter)
    );
}

/// An RFC 5389 Binding request with a fresh transaction id.
fn stun_from(src: &str, dst: &str, id: u32) -> Vec<u8> {
    Packet::udp(src, dst, 40_000 + (id % 1000) as u16, 3478)
        .stun_binding(id)
        .build()
}

#[test]
fn the_stun_budget_holds_a_flood_and_lets_clients_and_media_through() {
    let Some(mut k) = Kernel::unpinned("media_budget", &lab(MediaCheck::Enforce, false)) else {
        return;
    };
    pin_this_thread_to_cpu0();
    let burst = media::STUN_SOURCE_BURST_DEFAULT as usize;
    let run = |k: &mut Kernel, frame: &[u8]| -> bool {
        let (pass, counter) = k.run(frame);
        if !pass {
            assert_eq!(
                refusal(k, counter),
                Some((Verdict::Drop, Reason::RateLimited)),
                "a refused STUN request: {}",
                k.describe(counter)
            );
        }
        pass
    };
    // One source, 2,000 requests at once: its burst passes, a few more as
    // its bucket refills while the test runs, no more.
    // What a bucket may have refilled by while the flood ran.
    let refill =
        |rate: u32, since: Instant| (f64::from(rate) * since.elapsed().as_secs_f64()) as usize + 1;
    let t = Instant::now();
    let passed = (0..2_000)
        .filter(|i| run(&mut k, &stun_from("198.19.7.7", SERVER, *i)))
        .count();
    let most = burst + refill(media::STUN_SOURCE_RATE_DEFAULT, t);
    assert!(
        (burst..=most).contains(&passed),
        "one source's flood: {passed} of 2000 passed, the burst is {burst}, at most {most}"
    );
    // A spoofed /16: every request from another source.
    let net_burst = media::STUN_NET_BURST_DEFAULT as usize;
    let t = Instant::now();
    let spoofed = (0..20_000u32)
        .filter(|i| {
            let src = format!("198.20.{}.{}", i / 250, 1 + i % 250);
            run(&mut k, &stun_from(&src, SERVER, *i))
        })
        .count();
    let most = net_burst + refill(media::STUN_NET_RATE_DEFAULT, t);
    assert!(
        (net_burst..=most).contains(&spoofed),
        "a spoofed /16's flood: {spoofed} of 20000 passed, the subnet's burst is {net_burst}, at most {most}"
    );
    // Meanwhile a legitimate client elsewhere gets its requests answered,
    // and established media (RTP, which takes no budget) flows from the
    // flooded subnet itself.
    for i in 0..10 {
        assert!(
            run(&mut k, &stun_from(CLIENT, SERVER, 90_000 + i)),
            "the legitimate client's Binding request {i} was refused during the flood"
        );
    }
    let mut rtp = Packet::udp("198.20.3.3", SERVER, 50_010, 50_000).rtp();
    rtp.payload.extend_from_slice(&[0x55; 160]);
    let frame = rtp.build();
    for i in 0..100 {
        let (pass, counter) = k.run(&frame);
        assert!(
            pass,
            "media packet {i} from the flooded subnet: {}",
            k.describe(counter)
        );
    }
    // IPv6: the source is its /64, the subnet its /48.
    let t = Instant::now();
    let v6 = (0..200u32)
        .filter(|i| {
            let src = format!("2001:db8:77:1::{:x}", i + 1);
            run(&mut k, &stun_from(&src, SERVER6, *i))
        })
        .count();
    let most = burst + refill(media::STUN_SOURCE_RATE_DEFAULT, t);
    assert!(
        (burst..=most).contains(&v6),
        "200 requests from one IPv6 /64 (many addresses): {v6} passed, the burst is {burst}"
    );
    eprintln!(
        "STUN budget: one source {passed}/2000, spoofed /16 {spoofed}/20000, one /64 {v6}/200 passed"
    );
}

#[test]
fn appliance_mode_checks_the_av_edge_media_rows() {
    let av = "198.18.2.12";
    let av6 = "2001:db8:2::12";
    let p = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    let profiles: Vec<portguard::policy::ProfileArg> = vec![
        p("198.18.2.12/32=av-edge-external"),
        p("2001:db8:2::12/128=av-edge-external"),
    ];
    let profile_legs: BTreeMap<Prefix, u32> = profiles.iter().map(|a| (a.prefix, 1)).collect();
    let spec = PolicySpec {
        profiles,
        mgmt: Mgmt::defaults(),
        placement: Placement::Appliance,
        local_addrs: vec![p2("198.18.9.1"), p2("2001:db8:9::1")],
        profile_legs,
        ..PolicySpec::default()
    };
    let Some(mut k) = Kernel::appliance("media_appliance", &unlimited(spec), 2) else {
        return;
    };
    let real = load("real.txt");
    let mut junk = load("reflection.txt");
    junk.extend(crafted_reflections());
    for (src, dst) in [("198.19.0.7", av), ("2001:db8:ff::7", av6)] {
        for tagged in [false, true] {
            let frame = |d: &Datagram| {
                let mut p = Packet::udp(src, dst, d.sport, 3478);
                p.payload = d.payload.clone();
                if tagged { p.vlan(ETH_P_8021Q, 7) } else { p }.build()
            };
            for d in &real {
                let (pass, counter) = k.run_on(0, &frame(d));
                assert!(
                    pass && refusal(&k, counter).is_none(),
                    "appliance: {} to the A/V Edge {dst} 3478 (tagged {tagged}): {}",
                    d.source,
                    k.describe(counter)
                );
            }
            for d in &junk {
                let (pass, counter) = k.run_on(0, &frame(d));
                assert!(
                    !pass && refusal(&k, counter).is_some(),
                    "appliance: {} from {} to the A/V Edge {dst} 3478 (tagged {tagged}) passed: {}",
                    d.source,
                    d.sport,
                    k.describe(counter)
                );
            }
        }
    }
}

fn p2(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}
