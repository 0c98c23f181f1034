//! The verdict of a frame: the host fast path, the full parser's decision
//! for every shape and mode, profiles and their cache, the management
//! guard, fragments, IPsec accounting.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use classifier_common::{
    Addr, Config, DIR_INBOUND, DIR_OUTBOUND, FLAG_APPLIANCE, FLAG_DROP_ECHO, FLAG_DROP_IPSEC_MEDIA,
    FLAG_MONITOR, FlowKey, FragKey, FragVerdict, GenConfig, PCLASS_ICMP, PCLASS_OTHER, PCLASS_TCP,
    PCLASS_UDP, PEER_CACHE_SLOTS, PEER_SCOPE_BITS, PROFILE_NONE, PROTO_TCP, PROTO_UDP, PeerAddr,
    PeerCacheEntry, Reason, SEL_CACHE_SLOTS, SHARE_FRAGMENTS, SLOT_MASK, SLOT_PEERS,
    STAT_CONFIRMED_REFUSED, STAT_FRAGMENT_INSERTS, STAT_FRAGMENT_REFUSED, SelCacheEntry, ShareKey,
    Verdict, essentials, fast_block_generation, fast_block_index,
    media::{MEDIA_INDEX_MASK, MEDIA_SLOT_FLAG},
    port_block_index, reason_counter_index,
};

use crate::{
    events::{self, Hook},
    flows::{self, Answer, local_port_has_flows},
    maps::{FRAGMENTS, MGMT, PEER_CACHE, PEERS, PORT_BLOCKS, PROFILES, SEL_CACHE},
    media::{self, Handoff},
    parse::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Frame, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3, TCP_ACK, TCP_HLEN, TCP_SYN, UDP_HLEN,
        V4_MAPPED, Words, be16_at, ethernet, opaque, parse_ipv4, parse_ipv6, pclass_of,
    },
};

/// What the packet path decided: the `COUNTERS` entry to bump and whether the
/// frame goes on.
#[derive(Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) counter: u32,
    pub(crate) pass: bool,
}

#[inline(always)]
pub(crate) fn pass(reason: Reason, pclass: u32) -> Outcome {
    Outcome {
        counter: reason_counter_index(reason as u32, Verdict::Pass as u32, pclass),
        pass: true,
    }
}

/// A drop, or in monitor mode a pass counted as `would_drop`.
#[inline(always)]
pub(crate) fn deny(reason: Reason, pclass: u32, config: &Config) -> Outcome {
    if config.flags & FLAG_MONITOR != 0 {
        Outcome {
            counter: reason_counter_index(reason as u32, Verdict::WouldDrop as u32, pclass),
            pass: true,
        }
    } else {
        Outcome {
            counter: reason_counter_index(reason as u32, Verdict::Drop as u32, pclass),
            pass: false,
        }
    }
}

/// The common packet on a host: an unfragmented TCP or UDP packet, IPv4
/// without options or IPv6 without extension headers, under at most
/// `MAX_VLAN_TAGS` tags, when the generation in force has a fast table
/// (`Config::fast_block_base`: a default profile, no `--profile` prefixes,
/// not an appliance). It is decided here with one port lookup and
/// few live values; anything else (`None`) goes to `classify_any`, which
/// parses the frame again from the start and decides every case. Each
/// verdict here is the one `classify_any` would give: the same checks in the
/// same order, minus the branches the conditions above rule out; where a
/// decision needs an address (flows, management), it leaves the packet to
/// `classify_any`.
#[inline(always)]
pub(crate) fn fast_path(ctx: &XdpContext, config: &Config) -> Option<Outcome> {
    let base = config.fast_block_base;
    if base == 0 {
        return not_fast();
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.ctx.cast(),
    };
    let (ethertype, off) = ethernet!(frame, return not_fast());
    // One bounds check per family covers the IP header and the ports that
    // follow it (there are no options or extension headers in between).
    let (proto, l4, end, ports) = if ethertype == ETH_P_IP {
        let Some(h) = frame.ptr::<[u8; 20 + 4]>(off) else {
            return not_fast();
        };
        let h = h.cast::<u8>();
        // SAFETY (both): inside the checked 20 bytes.
        let (version_ihl, proto) = unsafe { (*h, *h.add(9)) };
        let total = be16_at(h, 2) as usize;
        // No options, no fragment (neither MF nor an offset). (A total
        // under 20 needs no test of its own: it puts the end before the
        // transport header, which the check below refuses.)
        if version_ihl != 0x45 || be16_at(h, 6) & 0x3fff != 0 || off + total > frame.len() {
            return not_fast();
        }
        // SAFETY: inside the checked 24 bytes.
        (proto, off + 20, off + total, unsafe { h.add(20) })
    } else if ethertype == ETH_P_IPV6 {
        let Some(h) = frame.ptr::<[u8; 40 + 4]>(off) else {
            return not_fast();
        };
        let h = h.cast::<u8>();
        // SAFETY (both): inside the checked 40 bytes.
        let (version, proto) = unsafe { (*h >> 4, *h.add(6)) };
        let payload = be16_at(h, 4) as usize;
        if version != 6 || off + 40 + payload > frame.len() {
            return not_fast();
        }
        // SAFETY: inside the checked 44 bytes.
        (proto, off + 40, off + 40 + payload, unsafe { h.add(40) })
    } else {
        return not_fast();
    };
    let (proto, pclass, hlen) = match proto {
        IPPROTO_UDP => (PROTO_UDP, PCLASS_UDP, UDP_HLEN),
        IPPROTO_TCP => (PROTO_TCP, PCLASS_TCP, TCP_HLEN),
        _ => return not_fast(),
    };
    if l4 + hlen > end {
        return not_fast();
    }
    let (sport, dport) = (be16_at(ports, 0), be16_at(ports, 2));
    if proto == PROTO_UDP && essentials::dhcp_reply(sport, dport) {
        core::hint::cold_path();
        return Some(pass(Reason::Dhcp, pclass));
    }
    let slot = port_slot(fast_block_index(base, proto, dport), dport);
    if slot != 0 {
        // A rule with address sets needs the source address: the full path.
        if slot & SLOT_PEERS != 0 {
            return not_fast();
        }
        // A media rule's datagram that is not plainly media goes to the
        // media program, which decides and counts it; this path goes on
        // only if that tail call fails (no media program: the loader
        // installs it before any policy).
        if slot & MEDIA_SLOT_FLAG != 0
            && !media::plainly_media(&frame, fast_block_generation(base), l4, end, sport)
        {
            media::hand_off(
                frame.ctx,
                &Handoff {
                    slot,
                    leg: 0,
                    addrs: off + if ethertype == ETH_P_IPV6 { 8 } else { 12 },
                    l4,
                    end,
                    v6: ethertype == ETH_P_IPV6,
                    budget: true,
                    generation: fast_block_generation(base),
                },
            );
        }
        return Some(Outcome {
            counter: (slot & MEDIA_INDEX_MASK) as u32,
            pass: true,
        });
    }
    // Not allowed by a rule: the management guard and the flow table need
    // the addresses, so a packet that may meet them is decided by the full
    // path. (A flow is possible only where `FLOW_PORTS` marks the port.)
    if (proto == PROTO_TCP && is_mgmt_port(config, dport)) || local_port_has_flows(dport) {
        return not_fast();
    }
    if proto == PROTO_UDP && essentials::ike_port(dport) {
        core::hint::cold_path();
        // The generation the table belongs to, not `config.generation`.
        let gen_config = &config.gens[fast_block_generation(base) as usize];
        if is_media_profile_in(gen_config, gen_config.default_profile) {
            return Some(ipsec(config, pclass));
        }
    }
    Some(deny(Reason::PortNotAllowed, pclass, config))
}

/// The fast path's "not mine": marked cold, so that LLVM lays the common
/// packet's path out as straight-line code and these exits out of its way.
#[inline(always)]
pub(crate) fn not_fast() -> Option<Outcome> {
    core::hint::cold_path();
    None
}

/// Every frame: the parser and decision for all shapes and modes. `leg` is
/// the leg the frame arrived on (always 0 on a host).
#[inline(always)]
pub(crate) fn classify_any(frame: &Frame, config: &Config, leg: u32) -> Outcome {
    let (ethertype, off) = ethernet!(frame, return deny(Reason::Malformed, PCLASS_OTHER, config));
    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4(frame, off, frame.len()),
        ETH_P_IPV6 => parse_ipv6(frame, off, frame.len()),
        ETH_P_ARP => return pass(Reason::Arp, PCLASS_OTHER),
        ETH_P_8021Q | ETH_P_8021AD => return deny(Reason::VlanDepth, PCLASS_OTHER, config),
        _ => return pass(Reason::NonIp, PCLASS_OTHER),
    };
    let l3 = match l3 {
        Ok(l3) => l3,
        Err(reason) => return deny(reason, PCLASS_OTHER, config),
    };

    if l3.later_fragment {
        return replay_fragment(frame, &l3, config);
    }
    let outcome = classify_l4(frame, &l3, config, leg);
    if l3.fragment && outcome.pass {
        remember_fragment(frame, &l3, config, leg, outcome);
    }
    outcome
}

/// A first fragment that passed: the rest of its datagram follows its
/// verdict. A dropped one takes no entry (its later fragments are orphans,
/// dropped too), and a source may have only `Config::fragment_share` first
/// fragments remembered per window, so that neither a flood of forbidden
/// fragments nor one source's allowed ones can push out a legitimate
/// datagram's entry.
#[inline(never)]
pub(crate) fn remember_fragment(
    frame: &Frame,
    l3: &L3,
    config: &Config,
    leg: u32,
    outcome: Outcome,
) {
    let key = frag_key(frame, l3);
    if !flows::take_share(&share_key(&key.src, SHARE_FRAGMENTS), config.fragment_share) {
        flows::count(STAT_FRAGMENT_REFUSED);
        if events::refusal_wanted(config.flags) {
            events::emit_refusal(
                frame,
                Hook::Xdp,
                STAT_FRAGMENT_REFUSED,
                leg_ifindex(config, leg),
                frame.len() as u32,
            );
        }
        return;
    }
    let verdict = FragVerdict {
        counter: outcome.counter,
        pass: outcome.pass as u32,
    };
    if FRAGMENTS.insert(key, verdict, 0).is_ok() {
        flows::count(STAT_FRAGMENT_INSERTS);
    }
}

/// The share of `addr`'s prefix (an IPv4 address, an IPv6 /64) in `kind`.
#[inline(always)]
pub(crate) fn share_key(addr: &Addr, kind: u32) -> ShareKey {
    // SAFETY: same size, and every bit pattern is a valid set of words.
    let w = unsafe { core::mem::transmute::<Addr, Words>(*addr) };
    let prefix = if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED {
        [w[2], w[3]]
    } else {
        [w[0], w[1]]
    };
    ShareKey {
        prefix,
        kind,
        pad: 0,
    }
}

#[inline(always)]
pub(crate) fn frag_key(frame: &Frame, l3: &L3) -> FragKey {
    FragKey {
        src: l3.src(frame),
        dst: l3.dst(frame),
        id: l3.frag_id,
        proto: l3.frag_proto,
        pad: [0; 3],
    }
}

#[inline(always)]
pub(crate) fn replay_fragment(frame: &Frame, l3: &L3, config: &Config) -> Outcome {
    // SAFETY: the value is copied out at once; an LRU entry may be evicted
    // concurrently but its memory stays valid for this RCU section.
    match unsafe { FRAGMENTS.get(frag_key(frame, l3)) } {
        Some(v) => Outcome {
            counter: v.counter,
            pass: v.pass != 0,
        },
        None => deny(Reason::FragmentOrphan, pclass_of(l3.proto), config),
    }
}

#[inline(always)]
pub(crate) fn classify_l4(frame: &Frame, l3: &L3, config: &Config, leg: u32) -> Outcome {
    // The transport header must lie inside the IP packet, not in padding
    // after it.
    let hlen = match l3.proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        IPPROTO_ICMP if !l3.v6 => 4,
        IPPROTO_ICMPV6 if l3.v6 => 4,
        _ => 0,
    };
    if l3.l4 + hlen > opaque(&l3.end) {
        return deny(Reason::Malformed, pclass_of(l3.proto), config);
    }
    match l3.proto {
        IPPROTO_TCP => match frame.ptr::<[u8; TCP_HLEN]>(l3.l4) {
            Some(h) => {
                let h = h.cast::<u8>();
                // SAFETY: inside the checked header.
                let flags = unsafe { *h.add(13) };
                decide_ports(
                    frame,
                    l3,
                    config,
                    leg,
                    PROTO_TCP,
                    PCLASS_TCP,
                    be16_at(h, 0),
                    be16_at(h, 2),
                    flags,
                )
            }
            None => deny(Reason::Malformed, PCLASS_TCP, config),
        },
        IPPROTO_UDP => match frame.ptr::<[u8; UDP_HLEN]>(l3.l4) {
            Some(h) => {
                let h = h.cast::<u8>();
                decide_ports(
                    frame,
                    l3,
                    config,
                    leg,
                    PROTO_UDP,
                    PCLASS_UDP,
                    be16_at(h, 0),
                    be16_at(h, 2),
                    0,
                )
            }
            None => deny(Reason::Malformed, PCLASS_UDP, config),
        },
        IPPROTO_ICMP if !l3.v6 => classify_icmp(frame, l3, config),
        IPPROTO_ICMPV6 if l3.v6 => classify_icmp(frame, l3, config),
        essentials::IPPROTO_ESP | essentials::IPPROTO_AH if to_media_host(frame, l3, config) => {
            ipsec(config, PCLASS_OTHER)
        }
        _ => deny(Reason::ProtoNotAllowed, PCLASS_OTHER, config),
    }
}

#[inline(always)]
pub(crate) fn ipsec(config: &Config, pclass: u32) -> Outcome {
    if config.flags & FLAG_DROP_IPSEC_MEDIA != 0 {
        deny(Reason::IpsecOnMediaPath, pclass, config)
    } else {
        pass(Reason::IpsecOnMediaPath, pclass)
    }
}

#[inline(always)]
pub(crate) fn classify_icmp(frame: &Frame, l3: &L3, config: &Config) -> Outcome {
    // Type, code and checksum: every ICMP message has at least these. (A
    // one-byte read would also let LLVM turn the check into `end > p`, which
    // the verifier cannot use.)
    let Some([icmp_type, _, _, _]) = frame.bytes::<4>(l3.l4) else {
        return deny(Reason::Malformed, PCLASS_ICMP, config);
    };
    let (reason, echo_request) = if l3.v6 {
        match icmp_type {
            // Destination unreachable, packet too big, time exceeded, parameter problem.
            t if essentials::icmp6_error(t) => (Reason::Icmp, false),
            essentials::ICMP6_ECHO_REQUEST => (Reason::Echo, true),
            essentials::ICMP6_ECHO_REPLY => (Reason::Echo, false),
            // MLD query/report/done, router and neighbour solicitation and
            // advertisement, MLDv2 report. Redirect (137) is left out on purpose.
            t if essentials::icmp6_neighbor_discovery(t) => (Reason::NeighborDiscovery, false),
            _ => return deny(Reason::IcmpType, PCLASS_ICMP, config),
        }
    } else {
        match icmp_type {
            // Destination unreachable (incl. fragmentation needed), time exceeded, parameter problem.
            t if essentials::icmp4_error(t) => (Reason::Icmp, false),
            essentials::ICMP4_ECHO_REQUEST => (Reason::Echo, true),
            essentials::ICMP4_ECHO_REPLY => (Reason::Echo, false),
            _ => return deny(Reason::IcmpType, PCLASS_ICMP, config),
        }
    };
    if echo_request && config.flags & FLAG_DROP_ECHO != 0 {
        return deny(Reason::Echo, PCLASS_ICMP, config);
    }
    pass(reason, PCLASS_ICMP)
}

/// An address's entry in `PROFILES` for the active generation: its profile
/// (`PROFILE_NONE` when no prefix holds it) and whether it is one of the
/// appliance's own addresses.
#[derive(Clone, Copy)]
pub(crate) struct Sel {
    pub(crate) profile: u32,
    pub(crate) local: bool,
    /// The leg the address sits behind, + 1 (0: behind no leg).
    pub(crate) leg: u32,
}

/// `PROFILES`' answer for `addr` in the generation in force (`generation`,
/// whose `GenConfig::sel_epoch` is `epoch`), through this CPU's `SEL_CACHE`:
/// destinations in its first half, sources in its second, so that sources
/// from many addresses (a flood, the internet's clients) cannot push the
/// few destinations out.
///
/// The trie walk was the largest cost of a forwarded packet (about 13 ns of
/// 32 above the empty program); the addresses an appliance forwards to are
/// few, so nearly every lookup is a cache hit: a hash, a slot and four
/// compares. The answer cannot go stale: it is stored under the epoch of the
/// generation it was read in, the trie answers every address the same while
/// that generation is in force (the loader rewrites only the other one), and
/// the flip brings a new epoch. A miss (a new address, a reload, an address
/// in a colliding slot) walks the trie and fills the slot.
#[inline(always)]
pub(crate) fn lookup_sel(addr: &Addr, generation: usize, epoch: u32, half: CacheHalf) -> Sel {
    // SAFETY: same size, and every bit pattern is a valid set of words.
    // (Words of four bytes: the address is also the trie key's, at offset 4,
    // where the verifier refuses an 8-byte stack store.)
    let words = unsafe { core::mem::transmute::<Addr, Words>(*addr) };
    let hash = address_hash(&words, 0);
    let slot = SEL_CACHE.get_ptr_mut((hash >> 57) as u32 & (SEL_CACHE_SLOTS / 2 - 1) | half as u32);
    if let Some(e) = slot {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe {
            if epoch != 0 && (*e).sel_epoch == epoch && (*e).addr == words {
                return Sel {
                    profile: (*e).profile,
                    local: (*e).local != 0,
                    leg: (*e).leg,
                };
            }
        }
    }
    core::hint::cold_path();
    // The trie key's address sits at offset 4 (after the prefix length): in
    // a key of its own LLVM may store it with 8-byte words there, which the
    // verifier refuses on the stack. Four bytes in front align it.
    let key = AlignedLpmKey {
        _align: 0,
        key: Key::new(128, *addr),
    };
    let sel = match PROFILES.get(&key.key) {
        Some(sel) => Sel {
            profile: sel.by_generation[generation],
            local: sel.local_by_generation[generation] != 0,
            leg: sel.leg_by_generation[generation],
        },
        None => Sel {
            profile: PROFILE_NONE,
            local: false,
            leg: 0,
        },
    };
    if let Some(e) = slot {
        // SAFETY: as above.
        unsafe {
            *e = SelCacheEntry {
                addr: words,
                sel_epoch: epoch,
                profile: sel.profile,
                local: u32::from(sel.local),
                leg: sel.leg,
            };
        }
    }
    sel
}

/// The hash the per-CPU address caches (`SEL_CACHE`, `PEER_CACHE`) take
/// their slot from, its top bits: an address's four words folded into one
/// u64 with `salt` (the rule a `PEER_CACHE` answer is for), then multiplied.
/// IPv4 is the last word (mapped): it goes to the high half, where the
/// multiply spreads it into the top bits.
#[inline(always)]
pub(crate) fn address_hash(words: &Words, salt: u32) -> u64 {
    let folded = u64::from(words[0] ^ words[2] ^ salt) | u64::from(words[1] ^ words[3]) << 32;
    folded.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// An LPM trie key whose address is 8-byte aligned on the stack.
#[repr(C, align(8))]
pub(crate) struct AlignedLpmKey {
    pub(crate) _align: u32,
    pub(crate) key: Key<Addr>,
}

/// Which half of `SEL_CACHE` an address is cached in (the slot's top bit).
#[derive(Clone, Copy)]
pub(crate) enum CacheHalf {
    Destination = 0,
    Source = SEL_CACHE_SLOTS as isize / 2,
}

/// The destination's profile in the active generation.
#[inline(always)]
pub(crate) fn dst_sel(frame: &Frame, l3: &L3, config: &Config) -> Sel {
    let generation = (config.generation & 1) as usize;
    let default = config.gens[generation].default_profile;
    if config.gens[generation].has_prefixes == 0 {
        return Sel {
            profile: default,
            local: false,
            leg: 0,
        };
    }
    let epoch = config.gens[generation].sel_epoch;
    let mut sel = lookup_sel(&l3.dst(frame), generation, epoch, CacheHalf::Destination);
    if sel.profile == PROFILE_NONE {
        sel.profile = default;
    }
    sel
}

#[inline(always)]
pub(crate) fn to_media_host(frame: &Frame, l3: &L3, config: &Config) -> bool {
    is_media_profile(dst_sel(frame, l3, config).profile, config)
}

#[inline(always)]
pub(crate) fn is_media_profile(profile: u32, config: &Config) -> bool {
    is_media_profile_in(&config.gens[(config.generation & 1) as usize], profile)
}

/// Whether `profile` runs a media role in one generation's settings.
#[inline(always)]
pub(crate) fn is_media_profile_in(gen_config: &GenConfig, profile: u32) -> bool {
    profile < 32 && gen_config.media_profiles & (1 << profile) != 0
}

/// The rule slot `profile`'s `direction` rows give (proto, port), 0 if none.
#[inline(always)]
pub(crate) fn rule_slot(
    profile: u32,
    config: &Config,
    direction: u32,
    proto: u32,
    port: u16,
) -> u16 {
    let generation = config.generation & 1;
    port_slot(
        port_block_index(profile, generation, direction, proto, port),
        port,
    )
}

/// The rule slot of `port` in the `PORT_BLOCKS` entry `index` (0: no rule).
#[inline(always)]
pub(crate) fn port_slot(index: u32, port: u16) -> u16 {
    match PORT_BLOCKS.get_ptr(index) {
        Some(block) => {
            // Four u16 slots read as one word: no indexing, so no bounds branch.
            // SAFETY: `get_ptr` returned a valid pointer to an 8-byte value.
            let word = unsafe { core::ptr::read_unaligned(block as *const u64) };
            (word >> ((port as u64 & 3) * 16)) as u16
        }
        None => 0,
    }
}

/// The port decision. Inline: the parser's state holds no addresses, and
/// the keys built here fit the same frame; a call to an out-of-line
/// function would spill the parser's state on every packet.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined: the arguments are registers"
)]
pub(crate) fn decide_ports(
    frame: &Frame,
    l3: &L3,
    config: &Config,
    leg: u32,
    proto: u32,
    pclass: u32,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Outcome {
    if proto == PROTO_UDP && essentials::dhcp_reply(sport, dport) {
        return pass(Reason::Dhcp, pclass);
    }
    let appliance = config.flags & FLAG_APPLIANCE != 0;
    // Read once: a rule's slot and its address sets must come from the
    // same generation, whichever a reload flips to meanwhile.
    let generation = config.generation & 1;

    // A rule whose address sets (`peers`) leave the peer out does not
    // match: the packet goes on as if there were no rule, and if nothing
    // else passes it, it is dropped as `peer_not_allowed`. `refused` says
    // so through a volatile stack slot and arithmetic, never a branch: the
    // verifier then treats its two values as one state (an imprecise
    // scalar), where a flag LLVM could branch on doubled the states of the
    // whole rest of the decision past the verifier's limit.
    let mut refused: u32 = 0;
    let dst = dst_sel(frame, l3, config);
    if dst.profile != PROFILE_NONE {
        let slot = port_slot(
            port_block_index(dst.profile, generation, DIR_INBOUND, proto, dport),
            dport,
        );
        // Inbound: the peer is the source.
        if slot != 0 {
            if slot & SLOT_PEERS == 0 || peer_in(config, generation, slot, &l3.src(frame)) {
                // A media rule's datagram: the media program decides it
                // (here every one: the check in line would multiply the
                // paths the verifier walks through this decision past its
                // limit).
                if slot & MEDIA_SLOT_FLAG != 0 {
                    media::hand_off(frame.ctx, &media_handoff(l3, config, leg, slot, true));
                }
                return Outcome {
                    counter: (slot & SLOT_MASK) as u32,
                    pass: true,
                };
            }
            // SAFETY: a plain write to a local.
            unsafe { core::ptr::write_volatile(&mut refused, 1) };
        }
    }
    // Appliance mode: a packet from a profile's address meets that profile's
    // outbound rows, if it arrived on the leg that address sits behind (a
    // strict reverse-path check: a frame on the internet leg that claims an
    // Edge Server's source is not the Edge's). Only profiles with such rows
    // pay for the lookup.
    let mut src_profile = PROFILE_NONE;
    if appliance {
        let outbound = config.gens[generation as usize].outbound_profiles;
        if outbound != 0 {
            let epoch = config.gens[generation as usize].sel_epoch;
            let src = lookup_sel(
                &l3.src(frame),
                generation as usize,
                epoch,
                CacheHalf::Source,
            );
            src_profile = src.profile;
            if src_profile < 32 && outbound & (1 << src_profile) != 0 && src.leg == leg + 1 {
                let slot = port_slot(
                    port_block_index(src_profile, generation, DIR_OUTBOUND, proto, dport),
                    dport,
                );
                // Outbound: the peer is the destination.
                if slot != 0 {
                    if slot & SLOT_PEERS == 0 || peer_in(config, generation, slot, &l3.dst(frame)) {
                        // The profile's own media: checked, but its STUN
                        // requests (it is the ICE agent or the relay) take
                        // no budget.
                        if slot & MEDIA_SLOT_FLAG != 0 {
                            media::hand_off(
                                frame.ctx,
                                &media_handoff(l3, config, leg, slot, false),
                            );
                        }
                        return Outcome {
                            counter: (slot & SLOT_MASK) as u32,
                            pass: true,
                        };
                    }
                    // SAFETY: a plain write to a local.
                    unsafe { core::ptr::write_volatile(&mut refused, 1) };
                }
            }
        }
    }

    // The lockout guard: no catalog can take it away. Checked after the
    // catalog only so that allowed traffic does not pay for it; a port the
    // catalog allows is counted under its rule. An appliance keeps itself
    // reachable, never a server behind it.
    if proto == PROTO_TCP
        && is_mgmt_port(config, dport)
        && (!appliance || dst.local)
        && let Some(m) = MGMT.get(Key::new(128, l3.src(frame)))
    {
        let mut i = 0;
        while i < m.ports.len() {
            if m.ports[i] == dport {
                return pass(Reason::Management, pclass);
            }
            i += 1;
        }
    }

    // An answer to a flow that left by this leg. A pure SYN opens a
    // connection: it is never an answer.
    let syn_only = proto == PROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn_only && local_port_has_flows(dport) {
        let flow = FlowKey {
            remote: l3.src(frame),
            local: l3.dst(frame),
            remote_port: sport,
            local_port: dport,
            proto: l3.proto,
            leg: leg as u8,
            pad: [0; 2],
        };
        match flows::answer(&flow, flags) {
            Answer::No => {}
            Answer::Yes => return pass(Reason::Established, pclass),
            Answer::ConfirmationRefused => {
                if events::refusal_wanted(config.flags) {
                    events::emit_refusal(
                        frame,
                        Hook::Xdp,
                        STAT_CONFIRMED_REFUSED,
                        leg_ifindex(config, leg),
                        frame.len() as u32,
                    );
                }
                return pass(Reason::Established, pclass);
            }
        }
    }
    if dst.profile == PROFILE_NONE && src_profile == PROFILE_NONE {
        return deny(Reason::NoProfile, pclass, config);
    }
    if proto == PROTO_UDP && essentials::ike_port(dport) && is_media_profile(dst.profile, config) {
        return ipsec(config, pclass);
    }
    // SAFETY: a plain read of a local.
    let refused = unsafe { core::ptr::read_volatile(&refused) };
    deny_index(
        Reason::PortNotAllowed as u32
            + refused * (Reason::PeerNotAllowed as u32 - Reason::PortNotAllowed as u32),
        pclass,
        config,
    )
}

/// [`deny`] of a reason given as its number.
#[inline(always)]
pub(crate) fn deny_index(reason: u32, pclass: u32, config: &Config) -> Outcome {
    if config.flags & FLAG_MONITOR != 0 {
        Outcome {
            counter: reason_counter_index(reason, Verdict::WouldDrop as u32, pclass),
            pass: true,
        }
    } else {
        Outcome {
            counter: reason_counter_index(reason, Verdict::Drop as u32, pclass),
            pass: false,
        }
    }
}

/// Whether `addr` is in the address sets of the rule at `slot` (one with
/// `SLOT_PEERS`) in `generation`: this CPU's `PEER_CACHE`, else one `PEERS`
/// lookup, whose longest match says yes (1) or no (0), kept in the cache
/// under the generation's epoch. A partner's packets then cost a hash and
/// five compares; a flood of strangers from random sources misses, walks
/// the trie as it would without the cache, and may push partners out (who
/// then walk it too).
#[inline(always)]
pub(crate) fn peer_in(config: &Config, generation: u32, slot: u16, addr: &Addr) -> bool {
    let scope = u32::from_ne_bytes(classifier_common::peer_scope(generation, slot));
    let epoch = config.gens[(generation & 1) as usize].sel_epoch;
    peer_cached(epoch, scope, addr) != 0
}

/// [`peer_in`]'s cache and lookup, out of line: the verifier walks the
/// cache's hit and miss once per call state rather than through every path
/// of the decision after it (in line it cost 154,000 more verified
/// instructions than this).
#[inline(never)]
fn peer_cached(epoch: u32, scope_word: u32, addr: &Addr) -> u32 {
    // SAFETY: same size, and every bit pattern is a valid set of words.
    let words = unsafe { core::mem::transmute::<Addr, Words>(*addr) };
    let scope = scope_word.to_ne_bytes();
    let hash = address_hash(&words, scope_word);
    let entry = PEER_CACHE.get_ptr_mut((hash >> 56) as u32 & (PEER_CACHE_SLOTS - 1));
    if let Some(e) = entry {
        // SAFETY: a per-CPU array value is only touched by this CPU.
        unsafe {
            if epoch != 0
                && (*e).sel_epoch == epoch
                && (*e).scope == scope_word
                && (*e).addr == words
            {
                return (*e).admitted;
            }
        }
    }
    core::hint::cold_path();
    let key = AlignedPeerKey {
        key: Key::new(PEER_SCOPE_BITS + 128, PeerAddr { scope, addr: *addr }),
    };
    // 0: a range carved out of a shorter admitted prefix (the IPv4-mapped
    // range under an IPv6 `::/0`).
    let admitted = u32::from(PEERS.get(&key.key).is_some_and(|admitted| *admitted != 0));
    if let Some(e) = entry {
        // SAFETY: as above.
        unsafe {
            *e = PeerCacheEntry {
                addr: words,
                scope: scope_word,
                sel_epoch: epoch,
                admitted,
                pad: 0,
            };
        }
    }
    admitted
}

/// A `PEERS` key whose address (at offset 8) is 8-byte aligned on the stack.
#[repr(C, align(8))]
pub(crate) struct AlignedPeerKey {
    pub(crate) key: Key<PeerAddr>,
}

/// The media program's inputs for a frame the full parser read.
#[inline(always)]
fn media_handoff(l3: &L3, config: &Config, leg: u32, slot: u16, budget: bool) -> Handoff {
    Handoff {
        slot,
        leg,
        addrs: l3.addrs,
        l4: l3.l4,
        end: l3.end,
        v6: l3.v6,
        budget,
        generation: config.generation & 1,
    }
}

#[inline(always)]
pub(crate) fn is_mgmt_port(config: &Config, port: u16) -> bool {
    let mut i = 0;
    while i < config.mgmt_ports.len() {
        if config.mgmt_ports[i] == port && port != 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// The interface of leg `leg` (a host's one interface is leg 0).
#[inline(always)]
pub(crate) fn leg_ifindex(config: &Config, leg: u32) -> u32 {
    config.legs[(leg as usize) & (config.legs.len() - 1)]
}

/// The leg a packet arrived on: its index in `Config::legs`, 0 if unknown.
#[inline(always)]
pub(crate) fn leg_of(config: &Config, ifindex: u32) -> u32 {
    let mut i = 0;
    while i < config.legs.len() {
        if config.legs[i] == ifindex {
            return i as u32;
        }
        i += 1;
    }
    0
}
