//! Frames written as one line of text, for the verdict spec
//! (`tests/data/verdicts.toml`): what a packet is, readable in review, and
//! built into the same bytes by [`frames::Packet`] every time.
//!
//! Words, separated by spaces:
//! - the packet: `udp SRC:SPORT > DST:DPORT`, `tcp SRC:SPORT > DST:DPORT`
//!   (a SYN unless `flags` says otherwise), `icmp SRC > DST TYPE/CODE`,
//!   `proto N SRC > DST` (any other IP protocol, payload only), `arp`
//!   (a request) or `lldp` (another ethertype); an IPv6 address with a port
//!   is written `[ADDR]:PORT`;
//! - what the packet carries: `flags LETTERS` (TCP, from `FSRPAU`),
//!   `vlan TPID:VID` (hex TPID, outermost first), `payload N` (bytes 0, 1,
//!   2...), `stun` (a STUN Binding request), `options HEX` (IPv4), `frag OFFSET more|last ID` (IPv4 fragment
//!   fields, or an IPv6 fragment header in the extension chain, in 8-byte
//!   units), `ext hbh|rt|dst` (IPv6 extension headers, in order);
//! - what is then done to the built bytes, in order: `cut N` (keep N
//!   bytes), `cut-l4 N` (keep N bytes and shrink the IP length field to
//!   match, so that what is missing is the transport header), `pad N` (zeros
//!   up to N bytes), `set AT HEX` (overwrite bytes from offset AT).

use std::net::IpAddr;

use crate::frames::{Ext, L4, Packet, arp, non_ip};

/// A frame as its text says: a packet (or a fixed frame) and the edits made
/// to its bytes.
#[derive(Clone, Debug)]
pub struct FrameText {
    pub base: Base,
    pub edits: Vec<Edit>,
}

#[derive(Clone, Debug)]
pub enum Base {
    Packet(Packet),
    /// An ARP request, with these VLAN tags.
    Arp(Vec<(u16, u16)>),
    Lldp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Cut(usize),
    CutL4(usize),
    Pad(usize),
    Set(usize, Vec<u8>),
}

const FLAG_LETTERS: [(char, u8); 6] = [
    ('F', 0x01),
    ('S', 0x02),
    ('R', 0x04),
    ('P', 0x08),
    ('A', 0x10),
    ('U', 0x20),
];

impl FrameText {
    pub fn parse(text: &str) -> Result<FrameText, String> {
        let mut w = Words(text.split_whitespace().peekable());
        let head = w.next("a packet kind")?;
        let mut base = match head {
            "arp" => Base::Arp(Vec::new()),
            "lldp" => Base::Lldp,
            "udp" | "tcp" => {
                let (src, sport) = endpoint(w.next("a source")?)?;
                w.expect(">")?;
                let (dst, dport) = endpoint(w.next("a destination")?)?;
                let l4 = if head == "udp" {
                    L4::Udp { sport, dport }
                } else {
                    L4::Tcp {
                        sport,
                        dport,
                        flags: crate::frames::TCP_SYN,
                    }
                };
                Base::Packet(Packet::new(src, dst, l4))
            }
            "icmp" => {
                let src = addr(w.next("a source")?)?;
                w.expect(">")?;
                let dst = addr(w.next("a destination")?)?;
                let tc = w.next("TYPE/CODE")?;
                let (t, c) = tc
                    .split_once('/')
                    .ok_or_else(|| format!("`{tc}` is not TYPE/CODE"))?;
                let l4 = L4::Icmp {
                    icmp_type: num(t)?,
                    code: num(c)?,
                };
                Base::Packet(Packet::new(src, dst, l4))
            }
            "proto" => {
                let proto = num(w.next("a protocol number")?)?;
                let src = addr(w.next("a source")?)?;
                w.expect(">")?;
                let dst = addr(w.next("a destination")?)?;
                Base::Packet(Packet::new(src, dst, L4::Raw { proto }))
            }
            other => return Err(format!("`{other}` is not a packet kind")),
        };
        let mut edits = Vec::new();
        while let Some(word) = w.0.next() {
            match (word, &mut base) {
                ("vlan", b) => {
                    let tag = w.next("TPID:VID")?;
                    let (tpid, vid) = tag
                        .split_once(':')
                        .ok_or_else(|| format!("`{tag}` is not TPID:VID"))?;
                    let tpid = u16::from_str_radix(tpid, 16)
                        .map_err(|_| format!("`{tpid}` is not a hex TPID"))?;
                    let tag = (tpid, num(vid)?);
                    match b {
                        Base::Packet(p) => p.vlans.push(tag),
                        Base::Arp(tags) => tags.push(tag),
                        Base::Lldp => return Err("lldp takes no VLAN tag".into()),
                    }
                }
                ("flags", Base::Packet(p)) => {
                    let letters = w.next("TCP flag letters")?;
                    let L4::Tcp { flags, .. } = &mut p.l4 else {
                        return Err("flags on a packet that is not TCP".into());
                    };
                    *flags = tcp_flags(letters)?;
                }
                ("payload", Base::Packet(p)) => {
                    let n: usize = num(w.next("a payload length")?)?;
                    *p = p.clone().payload(n);
                }
                ("stun", Base::Packet(p)) => *p = p.clone().stun_binding(1),
                ("options", Base::Packet(p)) => p.ipv4_options = unhex(w.next("option bytes")?)?,
                ("frag", Base::Packet(p)) => {
                    let offset = num(w.next("a fragment offset")?)?;
                    let more = match w.next("more or last")? {
                        "more" => true,
                        "last" => false,
                        other => return Err(format!("`{other}` is neither more nor last")),
                    };
                    let id = w.next("a fragment id")?;
                    if p.src.is_ipv6() {
                        p.ipv6_ext.push(Ext::Fragment {
                            offset,
                            more,
                            id: num(id)?,
                        });
                    } else {
                        p.ipv4_frag = Some((offset, more, num(id)?));
                    }
                }
                ("ext", Base::Packet(p)) => {
                    p.ipv6_ext.push(match w.next("an extension header")? {
                        "hbh" => Ext::HopByHop,
                        "rt" => Ext::Routing,
                        "dst" => Ext::DestOpts,
                        other => return Err(format!("`{other}` is not hbh, rt or dst")),
                    })
                }
                ("cut", _) => edits.push(Edit::Cut(num(w.next("a length")?)?)),
                ("cut-l4", Base::Packet(_)) => edits.push(Edit::CutL4(num(w.next("a length")?)?)),
                ("pad", _) => edits.push(Edit::Pad(num(w.next("a length")?)?)),
                ("set", _) => {
                    let at = num(w.next("an offset")?)?;
                    edits.push(Edit::Set(at, unhex(w.next("bytes")?)?));
                }
                (other, _) => return Err(format!("`{other}` does not apply to a {head} frame")),
            }
        }
        Ok(FrameText { base, edits })
    }

    /// The frame's bytes.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let mut f = match &self.base {
            Base::Packet(p) => p.build(),
            Base::Arp(tags) => {
                let plain = arp();
                let mut f = plain[..12].to_vec();
                for (tpid, vid) in tags {
                    f.extend_from_slice(&tpid.to_be_bytes());
                    f.extend_from_slice(&vid.to_be_bytes());
                }
                f.extend_from_slice(&plain[12..]);
                f
            }
            Base::Lldp => non_ip(),
        };
        for e in &self.edits {
            match e {
                Edit::Cut(n) | Edit::CutL4(n) if *n > f.len() => {
                    return Err(format!("cut to {n} bytes of a {}-byte frame", f.len()));
                }
                Edit::Cut(n) => f.truncate(*n),
                Edit::CutL4(n) => {
                    let Base::Packet(p) = &self.base else {
                        return Err("cut-l4 of a frame without IP".into());
                    };
                    f.truncate(*n);
                    fit_ip_length(&mut f, p)?;
                }
                Edit::Pad(n) => {
                    if *n > f.len() {
                        f.resize(*n, 0);
                    }
                }
                Edit::Set(at, bytes) => {
                    let (end, len) = (at + bytes.len(), f.len());
                    let dst = f.get_mut(*at..end).ok_or_else(|| {
                        format!("set {at}..{end} past the end of a {len}-byte frame")
                    })?;
                    dst.copy_from_slice(bytes);
                }
            }
        }
        Ok(f)
    }

    /// The packet, where the frame is one (not ARP or LLDP).
    pub fn packet(&self) -> Option<&Packet> {
        match &self.base {
            Base::Packet(p) => Some(p),
            _ => None,
        }
    }
}

/// Rewrites the IP length field of a frame cut short to the bytes left.
fn fit_ip_length(f: &mut [u8], p: &Packet) -> Result<(), String> {
    let l3 = 14 + 4 * p.vlans.len();
    let short = || format!("cut-l4 to {} bytes leaves no IP header", f.len());
    if p.src.is_ipv6() {
        let payload = f.len().checked_sub(l3 + 40).ok_or_else(short)?;
        let payload = u16::try_from(payload).map_err(|_| short())?;
        f[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
    } else {
        let total = f.len().checked_sub(l3).ok_or_else(short)?;
        let total = u16::try_from(total).map_err(|_| short())?;
        f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    }
    Ok(())
}

/// The text of a packet (no edits): `FrameText::parse` of it builds the same
/// bytes.
pub fn describe(p: &Packet) -> String {
    let ep = |a: IpAddr, port: u16| match a {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let mut s = match p.l4 {
        L4::Udp { sport, dport } => format!("udp {} > {}", ep(p.src, sport), ep(p.dst, dport)),
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut s = format!("tcp {} > {}", ep(p.src, sport), ep(p.dst, dport));
            if flags != crate::frames::TCP_SYN {
                let letters: String = FLAG_LETTERS
                    .iter()
                    .filter(|(_, bit)| flags & bit != 0)
                    .map(|(c, _)| *c)
                    .collect();
                s.push_str(&format!(" flags {letters}"));
            }
            s
        }
        L4::Icmp { icmp_type, code } => format!("icmp {} > {} {icmp_type}/{code}", p.src, p.dst),
        L4::Raw { proto } => format!("proto {proto} {} > {}", p.src, p.dst),
    };
    for (tpid, vid) in &p.vlans {
        s.push_str(&format!(" vlan {tpid:04x}:{vid}"));
    }
    if let Some((offset, more, id)) = p.ipv4_frag {
        let more = if more { "more" } else { "last" };
        s.push_str(&format!(" frag {offset} {more} {id:#x}"));
    }
    if !p.ipv4_options.is_empty() {
        s.push_str(&format!(" options {}", hex(&p.ipv4_options)));
    }
    for e in &p.ipv6_ext {
        s.push_str(&match e {
            Ext::HopByHop => " ext hbh".to_string(),
            Ext::Routing => " ext rt".to_string(),
            Ext::DestOpts => " ext dst".to_string(),
            Ext::Fragment { offset, more, id } => {
                let more = if *more { "more" } else { "last" };
                format!(" frag {offset} {more} {id}")
            }
        });
    }
    if !p.payload.is_empty() {
        s.push_str(&format!(" payload {}", p.payload.len()));
    }
    s
}

struct Words<'a>(std::iter::Peekable<std::str::SplitWhitespace<'a>>);

impl<'a> Words<'a> {
    fn next(&mut self, what: &str) -> Result<&'a str, String> {
        self.0.next().ok_or_else(|| format!("{what} is missing"))
    }

    fn expect(&mut self, word: &str) -> Result<(), String> {
        match self.0.next() {
            Some(w) if w == word => Ok(()),
            Some(w) => Err(format!("expected `{word}`, found `{w}`")),
            None => Err(format!("expected `{word}` at the end")),
        }
    }
}

/// A number, decimal or `0x` hex.
fn num<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let n = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    }
    .map_err(|_| format!("`{s}` is not a number"))?;
    T::try_from(n).map_err(|_| format!("{s} is out of range"))
}

fn addr(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("`{s}` is not an IP address"))
}

/// `ADDR:PORT` or `[ADDR]:PORT`.
fn endpoint(s: &str) -> Result<(IpAddr, u16), String> {
    let (a, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not ADDR:PORT"))?;
    let a = a
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(a);
    Ok((addr(a)?, num(port)?))
}

fn tcp_flags(letters: &str) -> Result<u8, String> {
    letters.chars().try_fold(0, |acc, c| {
        FLAG_LETTERS
            .iter()
            .find(|(l, _)| *l == c)
            .map(|(_, bit)| acc | bit)
            .ok_or_else(|| format!("`{c}` is not a TCP flag (FSRPAU)"))
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("`{s}` has an odd number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("`{s}` is not hex")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{ETH_P_8021AD, ETH_P_8021Q, TCP_ACK};

    fn roundtrip(p: Packet) {
        let text = describe(&p);
        let back = FrameText::parse(&text)
            .and_then(|t| t.build())
            .unwrap_or_else(|e| panic!("`{text}` does not parse back: {e}"));
        assert_eq!(back, p.build(), "`{text}` builds other bytes than {p:?}");
    }

    #[test]
    fn described_packets_build_the_same_bytes() {
        roundtrip(Packet::udp("198.18.0.1", "198.18.0.2", 40_000, 3478).vlan(ETH_P_8021Q, 10));
        roundtrip(
            Packet::tcp_flags("2001:db8::1", "2001:db8::2", 5061, 40_000, TCP_ACK)
                .vlan(ETH_P_8021AD, 100)
                .vlan(ETH_P_8021Q, 20)
                .ext(Ext::HopByHop)
                .ext(Ext::Fragment {
                    offset: 9,
                    more: true,
                    id: 77,
                })
                .ext(Ext::DestOpts)
                .payload(64),
        );
        let mut frag = Packet::new(
            "198.18.0.1".parse().expect("198.18.0.1 is an address"),
            "198.18.0.2".parse().expect("198.18.0.2 is an address"),
            L4::Raw { proto: 17 },
        )
        .payload(16);
        frag.ipv4_frag = Some((9, false, 0x4242));
        frag.ipv4_options = vec![0x94, 4, 0, 0];
        roundtrip(frag);
        roundtrip(Packet::icmp("2001:db8::1", "2001:db8::2", 128));
    }

    #[test]
    fn edits_apply_in_order() {
        let t = FrameText::parse("udp 198.18.0.1:1 > 198.18.0.2:2 payload 8 cut-l4 41 set 14 44")
            .and_then(|t| t.build())
            .expect("a UDP frame cut and edited builds");
        assert_eq!(t.len(), 41, "cut-l4 keeps 41 bytes");
        assert_eq!(
            &t[14..18],
            &[0x44, 0, 0, 27],
            "set after cut-l4's length fix"
        );
        let t = FrameText::parse("tcp 198.18.0.1:1 > 198.18.0.2:2 cut-l4 39")
            .and_then(|t| t.build())
            .expect("an IPv4 TCP frame cut to 39 bytes builds");
        assert_eq!(
            u16::from_be_bytes([t[16], t[17]]),
            25,
            "IPv4 total length rewritten"
        );
        let t = FrameText::parse("tcp [2001:db8::1]:1 > [2001:db8::2]:2 vlan 8100:1 cut-l4 61")
            .and_then(|t| t.build())
            .expect("a tagged IPv6 TCP frame cut to 61 bytes builds");
        assert_eq!(
            u16::from_be_bytes([t[22], t[23]]),
            3,
            "IPv6 payload length rewritten behind a VLAN tag"
        );
        let arp = FrameText::parse("arp vlan 8100:10")
            .and_then(|t| t.build())
            .expect("a tagged ARP request builds");
        assert_eq!(
            &arp[12..18],
            &[0x81, 0, 0, 10, 0x08, 0x06],
            "tag before ARP"
        );
    }

    #[test]
    fn bad_text_is_refused_with_the_word() {
        for (text, word) in [
            ("udp 198.18.0.1:1 198.18.0.2:2", "expected `>`"),
            ("tcp 198.18.0.1:1 > 198.18.0.2:2 flags SX", "`X`"),
            ("icmp 198.18.0.1 > 198.18.0.2 3", "TYPE/CODE"),
            ("lldp payload 3", "`payload`"),
            ("udp 198.18.0.1:1 > 198.18.0.2:2 cut 99", "cut to 99"),
        ] {
            let err = FrameText::parse(text)
                .and_then(|t| t.build())
                .err()
                .unwrap_or_else(|| panic!("`{text}` was accepted"));
            assert!(err.contains(word), "`{text}`: {err} does not name {word}");
        }
    }
}
