//! What a media port may carry: the first bytes of a UDP datagram, told
//! apart as RFC 7983 (updated by RFC 9443) does, with the Microsoft variants
//! Skype for Business and Teams clients send. One pure function, used by the
//! XDP program on every datagram to a `payload = "media"` rule and by the
//! userspace tests on real captures, so both agree by construction
//! (docs/packet-policy.md, "Media payload").
//!
//! The function sees the first [`HEAD`] bytes of the UDP payload (fewer are
//! zero-padded) and the payload's length: enough for each protocol's fixed
//! header and its length field, which is where junk gives itself away.

/// Bytes of the UDP payload [`classify`] reads.
pub const HEAD: usize = 8;

/// The STUN magic cookie (RFC 5389), at payload offset 4.
pub const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The ZRTP magic cookie ("ZRTP", RFC 6189), at payload offset 4.
pub const ZRTP_COOKIE: [u8; 4] = *b"ZRTP";
/// MS-TURN multiplexed TURN channels ([MS-TURN] 2.2.3): a 12-byte header
/// whose first two bytes are 0xFF10, then the inner message.
pub const MS_MUX_TYPE: [u8; 2] = [0xff, 0x10];

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MediaKind {
    /// Neither of the below: dropped as `not_media` on a media rule.
    NotMedia = 0,
    /// A STUN request that may make a server spend a session or answer with
    /// a challenge (Binding, Shared Secret, Allocate): the per-source budget
    /// applies.
    StunRequest = 1,
    /// Any other STUN message (responses, indications, Refresh,
    /// CreatePermission, ChannelBind, MS-TURN Send): RFC 5389 with the
    /// cookie, or the classic RFC 3489 / MS-TURN header without it.
    Stun = 2,
    Zrtp = 3,
    Dtls = 4,
    /// TURN ChannelData: RFC 8656's 0x4000-0x4FFF and the 0x5000-0x7FFF
    /// numbers RFC 5766 allowed (coturn's `--rfc5766-channel-numbers`).
    ChannelData = 5,
    Rtp = 6,
    Rtcp = 7,
    /// MS-TURN multiplexed TURN channel (first bytes 0xFF10).
    MsTurnMux = 8,
}

impl MediaKind {
    pub const fn is_media(self) -> bool {
        !matches!(self, MediaKind::NotMedia)
    }

    pub const fn name(self) -> &'static str {
        match self {
            MediaKind::NotMedia => "not_media",
            MediaKind::StunRequest => "stun_request",
            MediaKind::Stun => "stun",
            MediaKind::Zrtp => "zrtp",
            MediaKind::Dtls => "dtls",
            MediaKind::ChannelData => "channel_data",
            MediaKind::Rtp => "rtp",
            MediaKind::Rtcp => "rtcp",
            MediaKind::MsTurnMux => "ms_turn_mux",
        }
    }
}

#[inline(always)]
const fn be16(h: &[u8; HEAD], at: usize) -> usize {
    ((h[at] as usize) << 8) | h[at + 1] as usize
}

/// The kind of a UDP payload of `len` bytes whose first bytes are `head`
/// (zero past `len`). Straight-line code over one 8-byte word: no loop, no
/// table, a handful of compares on the common RTP packet.
#[inline(always)]
pub const fn classify(head: &[u8; HEAD], len: usize) -> MediaKind {
    let b0 = head[0];
    match b0 {
        // RTP/RTCP version 2 (RFC 3550). RTCP packet types 192-223 are the
        // range RFC 5761 keeps apart from RTP payload types when both share
        // a port; RTCP's length word ((length + 1) * 4 bytes) must fit.
        128..=191 => {
            let b1 = head[1];
            if b1 >= 192 && b1 <= 223 {
                if len >= 8 && (be16(head, 2) + 1) * 4 <= len {
                    MediaKind::Rtcp
                } else {
                    MediaKind::NotMedia
                }
            } else if len >= 12 {
                MediaKind::Rtp
            } else {
                MediaKind::NotMedia
            }
        }
        // STUN (RFC 5389/8489 and classic RFC 3489, which MS-TURN keeps):
        // a 20-byte header whose length field is the rest of the datagram,
        // a multiple of 4, and a message type STUN defines.
        0..=3 => {
            let msg_type = be16(head, 0);
            let body = be16(head, 2);
            if len < 20 || body + 20 != len || body & 3 != 0 {
                return MediaKind::NotMedia;
            }
            let cookie = head[4] == STUN_COOKIE[0]
                && head[5] == STUN_COOKIE[1]
                && head[6] == STUN_COOKIE[2]
                && head[7] == STUN_COOKIE[3];
            // Method (12 bits) apart from the class bits 0x0110.
            let method =
                (msg_type & 0x000f) | ((msg_type & 0x00e0) >> 1) | ((msg_type & 0x3e00) >> 2);
            let class = msg_type & 0x0110;
            // Without the cookie only the methods RFC 3489 and MS-TURN use
            // (Binding 1, Shared Secret 2, Allocate 3, Send 4, Data 5 and
            // Set Active Destination 6): a classic header has no other mark.
            if method == 0 || (!cookie && method > 6) {
                return MediaKind::NotMedia;
            }
            if class == 0 && method <= 3 {
                MediaKind::StunRequest
            } else {
                MediaKind::Stun
            }
        }
        // ZRTP (RFC 6189): 0x10 (version 0, no extension) and the cookie.
        16..=19 => {
            if len >= 12
                && head[4] == ZRTP_COOKIE[0]
                && head[5] == ZRTP_COOKIE[1]
                && head[6] == ZRTP_COOKIE[2]
                && head[7] == ZRTP_COOKIE[3]
            {
                MediaKind::Zrtp
            } else {
                MediaKind::NotMedia
            }
        }
        // DTLS 1.0-1.2 records (content types 20-25 with version major 254,
        // 13-byte header) and DTLS 1.3's unified header (001xxxxx, RFC 9147),
        // whose fields are encrypted or optional.
        20..=25 => {
            if len >= 13 && head[1] == 0xfe {
                MediaKind::Dtls
            } else {
                MediaKind::NotMedia
            }
        }
        32..=63 => {
            if len >= 2 {
                MediaKind::Dtls
            } else {
                MediaKind::NotMedia
            }
        }
        // TURN ChannelData (RFC 8656 0x4000-0x4FFF; RFC 5766 0x4000-0x7FFF):
        // the length field counts the application data, which over UDP may
        // be followed by up to 3 bytes of padding.
        64..=127 => {
            let data = be16(head, 2);
            if len >= 4 && data + 4 <= len && len - 4 - data <= 3 {
                MediaKind::ChannelData
            } else {
                MediaKind::NotMedia
            }
        }
        // MS-TURN multiplexed channel: 0xFF10, a length counting what
        // follows it, at least the rest of its 12-byte header.
        255 => {
            let data = be16(head, 2);
            if head[1] == MS_MUX_TYPE[1] && len >= 12 && data + 4 == len {
                MediaKind::MsTurnMux
            } else {
                MediaKind::NotMedia
            }
        }
        _ => MediaKind::NotMedia,
    }
}

/// [`classify`] over a whole payload (userspace and tests).
pub fn classify_payload(payload: &[u8]) -> MediaKind {
    let mut head = [0u8; HEAD];
    let n = if payload.len() < HEAD {
        payload.len()
    } else {
        HEAD
    };
    head[..n].copy_from_slice(&payload[..n]);
    classify(&head, payload.len())
}

/// Why a datagram on a media rule was refused (the index of its counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MediaRefusal {
    NotMedia = 0,
    Reflection = 1,
    RateLimited = 2,
}

pub const MEDIA_REFUSALS: u32 = 3;

/// Media rules the counters have room for: each has three pseudo-reasons
/// (`crate::media_reason`), 36 `COUNTERS` entries per leg.
pub const MAX_MEDIA_RULES: u32 = 64;
/// Set in a `PORT_BLOCKS` slot value: the port belongs to a media rule. The
/// low bits are its rule slot as for any rule (rule slots stay under
/// `MAX_RULE_SLOTS`, 2^14), which counts its passes.
pub const MEDIA_SLOT_FLAG: u16 = 1 << 15;
/// The rule slot of a slot value (without the media and peers bits).
pub const MEDIA_INDEX_MASK: u16 = crate::SLOT_MASK;

/// What the XDP program hands the media program with the tail call (the
/// per-CPU `MEDIA_SCRATCH`): where the headers are and what the rule is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MediaScratch {
    /// The rule slot (without `MEDIA_SLOT_FLAG`).
    pub slot: u32,
    /// The leg the frame arrived on.
    pub leg: u32,
    /// Offsets of the source address (the destination follows it) and of
    /// the UDP header in the frame.
    pub addrs: u32,
    pub l4: u32,
    /// The UDP payload's length, from the IP header.
    pub payload_len: u32,
    /// 1: IPv6.
    pub v6: u32,
    /// 1: STUN requests take from the budget (inbound rows).
    pub budget: u32,
    /// The generation whose reflection ports apply.
    pub generation: u32,
}

/// Bits of one `REFLECTION_PORTS` entry.
pub const REFLECTION_BITS_PER_ENTRY: u32 = 64;
/// Entries of one generation's reflection bitmap (one bit per source port).
pub const REFLECTION_ENTRIES_PER_GEN: u32 = 65_536 / REFLECTION_BITS_PER_ENTRY;

/// Where source `port`'s bit is in generation `generation`'s bitmap.
#[inline(always)]
pub const fn reflection_index(generation: u32, port: u16) -> (u32, u64) {
    (
        generation * REFLECTION_ENTRIES_PER_GEN + port as u32 / REFLECTION_BITS_PER_ENTRY,
        1u64 << (port as u32 % REFLECTION_BITS_PER_ENTRY),
    )
}

/// The default STUN budget per source (an IPv4 address, an IPv6 /64):
/// requests per second and burst. coturn's maintainers ask for a firewall
/// limit per source and subnet (coturn #780) and cap their own 401 answers
/// at 10 a second per source (coturn #1957); ICE connectivity checks are
/// Binding requests too, paced at one per 20-50 ms per agent (RFC 8445
/// Ta), so a source gets 25 a second with bursts of 50.
pub const STUN_SOURCE_RATE_DEFAULT: u32 = 25;
pub const STUN_SOURCE_BURST_DEFAULT: u32 = 50;
/// The default budget per subnet (an IPv4 /16, an IPv6 /48): a spoofed
/// flood from one subnet gets ten sources' worth, whatever it spreads over.
pub const STUN_NET_RATE_DEFAULT: u32 = 250;
pub const STUN_NET_BURST_DEFAULT: u32 = 500;
/// Sources and subnets whose budgets are kept at once (an LRU of its own:
/// a flood of spoofed sources evicts only other budgets, never a flow).
pub const STUN_BUDGET_ENTRIES: u32 = 65_536;

/// Key kinds of `STUN_BUDGET` (`crate::ShareKey::kind`).
pub const BUDGET_SOURCE: u32 = 2;
pub const BUDGET_NET: u32 = 3;

/// The budget keys of `addr` (IPv4-mapped or IPv6): its source prefix (an
/// IPv4 address, an IPv6 /64) and its subnet (an IPv4 /16, an IPv6 /48).
#[inline(always)]
pub fn budget_keys(addr: &crate::Addr) -> (crate::ShareKey, crate::ShareKey) {
    let v4 = addr[0] == 0
        && addr[1] == 0
        && addr[2] == 0
        && addr[3] == 0
        && addr[4] == 0
        && addr[5] == 0
        && addr[6] == 0
        && addr[7] == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff;
    let (w0, w1) = if v4 { (8, 12) } else { (0, 4) };
    let word = |at: usize| u32::from_ne_bytes([addr[at], addr[at + 1], addr[at + 2], addr[at + 3]]);
    let a = word(w0);
    let b = word(w1);
    // The subnet: the last two bytes of the IPv4 address or of the /64's
    // second word are cleared (a /16 of IPv4, a /48 of IPv6).
    let net_b = u32::from_ne_bytes([addr[w1], addr[w1 + 1], 0, 0]);
    (
        crate::ShareKey {
            prefix: [a, b],
            kind: BUDGET_SOURCE,
            pad: 0,
        },
        crate::ShareKey {
            prefix: [a, net_b],
            kind: BUDGET_NET,
            pad: 0,
        },
    )
}

/// Value of `STUN_BUDGET`: a token bucket counted in microseconds of credit
/// (a request costs `1e6 / rate`), so the packet path never divides.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StunBucket {
    pub credit_us: u64,
    /// Coarse monotonic clock, in microseconds, when credit was last added.
    pub last_us: u64,
}

/// The bucket's answer for one request at `now_us`, with `cost_us` per
/// request and room for `burst` of them: whether it passes, and the bucket
/// after it. A bucket seen for the first time (`None`) starts full.
#[inline(always)]
pub const fn take_token(
    bucket: Option<StunBucket>,
    now_us: u64,
    cost_us: u32,
    burst: u32,
) -> (bool, StunBucket) {
    let cap = cost_us as u64 * burst as u64;
    let mut b = match bucket {
        Some(b) => b,
        None => StunBucket {
            credit_us: cap,
            last_us: now_us,
        },
    };
    if now_us > b.last_us {
        let credit = b.credit_us + (now_us - b.last_us);
        b.credit_us = if credit > cap { cap } else { credit };
        b.last_us = now_us;
    }
    if b.credit_us >= cost_us as u64 {
        b.credit_us -= cost_us as u64;
        (true, b)
    } else {
        (false, b)
    }
}

/// Microseconds of credit one request costs at `rate` a second (0: no limit).
pub const fn cost_us(rate: u32) -> u32 {
    match 1_000_000u32.checked_div(rate) {
        Some(cost) => cost,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn rfc_7983_ranges_with_their_headers() {
        // RFC 5769's sample Binding request header (cookie, 20 + 88 bytes).
        let mut stun = [0u8; 108];
        stun[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(classify_payload(&stun), MediaKind::StunRequest);
        stun[1] = 0x01;
        stun[0] = 0x01; // Binding success response 0x0101
        assert_eq!(classify_payload(&stun), MediaKind::Stun);
        // The length must be the rest of the datagram.
        assert_eq!(classify_payload(&stun[..100]), MediaKind::NotMedia);
        // Classic RFC 3489 / MS-TURN Allocate request: no cookie.
        let mut classic = [0x55u8; 28];
        classic[..4].copy_from_slice(&[0x00, 0x03, 0x00, 0x08]);
        assert_eq!(classify_payload(&classic), MediaKind::StunRequest);
        // A classic header with a method only the cookie may carry.
        classic[1] = 0x09;
        assert_eq!(classify_payload(&classic), MediaKind::NotMedia);

        let rtp = [0x80, 0x00, 0x12, 0x34, 0, 0, 0, 160, 1, 2, 3, 4, 0xff];
        assert_eq!(classify_payload(&rtp), MediaKind::Rtp);
        assert_eq!(classify_payload(&rtp[..11]), MediaKind::NotMedia);
        let rtcp_rr = [0x81, 201, 0x00, 0x07, 0, 0, 0, 1];
        let mut rr = [0u8; 32];
        rr[..8].copy_from_slice(&rtcp_rr);
        assert_eq!(classify_payload(&rr), MediaKind::Rtcp);
        assert_eq!(classify_payload(&rr[..28]), MediaKind::NotMedia);

        let mut zrtp = [0u8; 20];
        zrtp[..8].copy_from_slice(&[0x10, 0, 0, 1, b'Z', b'R', b'T', b'P']);
        assert_eq!(classify_payload(&zrtp), MediaKind::Zrtp);

        let mut dtls = [0u8; 40];
        dtls[..3].copy_from_slice(&[22, 0xfe, 0xfd]);
        assert_eq!(classify_payload(&dtls), MediaKind::Dtls);
        dtls[1] = 0x03; // TLS, not DTLS
        assert_eq!(classify_payload(&dtls), MediaKind::NotMedia);

        // ChannelData 0x4001 with 5 bytes of data and 3 of padding, and an
        // RFC 5766 channel number (0x7ffe).
        let cd = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(classify_payload(&cd), MediaKind::ChannelData);
        let cd_old = [0x7f, 0xfe, 0x00, 0x04, 1, 2, 3, 4];
        assert_eq!(classify_payload(&cd_old), MediaKind::ChannelData);
        assert_eq!(classify_payload(&cd[..8]), MediaKind::NotMedia);

        let mut mux = [0u8; 40];
        mux[..4].copy_from_slice(&[0xff, 0x10, 0x00, 36]);
        assert_eq!(classify_payload(&mux), MediaKind::MsTurnMux);

        for junk in [
            &[][..],
            &[0x80][..],
            &[4, 5, 6, 7, 8, 9, 10, 11][..],
            &[200; 64][..],
        ] {
            assert_eq!(classify_payload(junk), MediaKind::NotMedia, "{junk:?}");
        }
    }

    #[test]
    fn budgets_fill_at_the_rate_and_hold_the_burst() {
        let cost = cost_us(25);
        let mut bucket = None;
        let mut passed = 0;
        for _ in 0..200 {
            let (ok, b) = take_token(bucket, 1_000, cost, 50);
            passed += usize::from(ok);
            bucket = Some(b);
        }
        assert_eq!(passed, 50, "a burst at one instant");
        let (ok, _) = take_token(bucket, 1_000 + u64::from(cost), cost, 50);
        assert!(ok, "one request's worth of time later");
        let (v4_src, v4_net) =
            budget_keys(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 7, 9]);
        let (_, v4_net2) =
            budget_keys(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 200, 1]);
        assert_eq!(v4_net, v4_net2, "one /16");
        assert_ne!(v4_src.prefix, v4_net.prefix);
    }
}
