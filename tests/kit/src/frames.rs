//! Building Ethernet frames for tests, benchmarks and fuzzing: VLAN tags,
//! IPv4 with options and fragments, IPv6 with extension headers, TCP, UDP,
//! ICMP, ESP, ARP. Checksums are real, so frames can also be put on a wire.
//!
//! Written by hand rather than with etherparse's `PacketBuilder` because the
//! tests need what a builder for valid packets does not offer: chains of any
//! number of IPv6 extension headers in any order (the parser's limit is one of
//! the things tested), fragment headers with arbitrary offsets, IPv4 options,
//! three VLAN tags, raw protocols, and frames the differential test then
//! mutates byte by byte. etherparse checks the result instead: the tests
//! below read every kind of frame back with it and verify its checksums.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// The transport part of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
    },
    /// Any other IP protocol, with raw payload only.
    Raw {
        proto: u8,
    },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An IPv6 extension header to put before the transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header: offset in 8-byte units, more-fragments, identification.
    Fragment {
        offset: u16,
        more: bool,
        id: u32,
    },
}

impl Ext {
    fn proto(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::DestOpts => 60,
            Ext::Fragment { .. } => 44,
        }
    }
}

/// A packet description; `build` turns it into bytes.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// (TPID, VLAN id), outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (padded to 4 bytes by `build`).
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset in 8-byte units, more-fragments flag, identification.
    pub ipv4_frag: Option<(u16, bool, u16)>,
    pub ipv6_ext: Vec<Ext>,
}

impl Packet {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Packet {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            vlans: Vec::new(),
            src,
            dst,
            l4,
            payload: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_frag: None,
            ipv6_ext: Vec::new(),
        }
    }

    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Packet::new(ip(src), ip(dst), L4::Udp { sport, dport })
    }

    /// A TCP SYN.
    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Packet::tcp_flags(src, dst, sport, dport, TCP_SYN)
    }

    pub fn tcp_flags(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Self {
        Packet::new(
            ip(src),
            ip(dst),
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn icmp(src: &str, dst: &str, icmp_type: u8) -> Self {
        Packet::new(ip(src), ip(dst), L4::Icmp { icmp_type, code: 0 })
    }

    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    /// A 16-byte RTP version 2 datagram's payload (RFC 3550): media, which
    /// a `payload = "media"` rule passes.
    pub fn rtp(mut self) -> Self {
        self.payload = vec![
            0x80, 0x00, 0, 1, 0, 0, 0, 160, 0x70, 0x67, 0x00, 0x01, 1, 2, 3, 4,
        ];
        self
    }

    /// A STUN Binding request's payload
    /// ([`crate::lab::send::stun_binding_request`]).
    pub fn stun_binding(mut self, id: u32) -> Self {
        self.payload = crate::lab::send::stun_binding_request(id);
        self
    }

    pub fn payload(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    pub fn ext(mut self, e: Ext) -> Self {
        self.ipv6_ext.push(e);
        self
    }

    /// The transport header and payload, checksummed.
    fn transport(&self) -> (u8, Vec<u8>) {
        let mut seg = Vec::new();
        let proto = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                seg.extend_from_slice(&sport.to_be_bytes());
                seg.extend_from_slice(&dport.to_be_bytes());
                seg.extend_from_slice(&1u32.to_be_bytes()); // seq
                seg.extend_from_slice(&0u32.to_be_bytes()); // ack
                seg.push(5 << 4);
                seg.push(flags);
                seg.extend_from_slice(&64_240u16.to_be_bytes());
                seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                6
            }
            L4::Udp { sport, dport } => {
                seg.extend_from_slice(&sport.to_be_bytes());
                seg.extend_from_slice(&dport.to_be_bytes());
                seg.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                17
            }
            L4::Icmp { icmp_type, code } => {
                seg.extend_from_slice(&[icmp_type, code, 0, 0, 0, 1, 0, 1]);
                if self.src.is_ipv6() { 58 } else { 1 }
            }
            L4::Raw { proto } => proto,
        };
        seg.extend_from_slice(&self.payload);
        let csum_at = match (&self.l4, self.src.is_ipv6()) {
            (L4::Tcp { .. }, _) => Some(16),
            (L4::Udp { .. }, _) => Some(6),
            (L4::Icmp { .. }, true) => Some(2),
            (L4::Icmp { .. }, false) => {
                let c = checksum(&[&seg]);
                seg[2..4].copy_from_slice(&c.to_be_bytes());
                None
            }
            (L4::Raw { .. }, _) => None,
        };
        if let Some(at) = csum_at {
            let pseudo = pseudo_header(self.src, self.dst, proto, seg.len());
            let mut c = checksum(&[&pseudo, &seg]);
            if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                c = 0xffff;
            }
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        (proto, seg)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, vid) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let (proto, seg) = self.transport();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let mut opts = self.ipv4_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let ihl = 20 + opts.len();
                let mut h = Vec::with_capacity(ihl);
                h.push(0x40 | (ihl / 4) as u8);
                h.push(0);
                h.extend_from_slice(&((ihl + seg.len()) as u16).to_be_bytes());
                let (offset, more, id) = self.ipv4_frag.unwrap_or((0, false, 0x1234));
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(
                    &((offset & 0x1fff) | if more { 0x2000 } else { 0 }).to_be_bytes(),
                );
                h.push(64);
                h.push(proto);
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&opts);
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut ext = Vec::new();
                for (i, e) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).map_or(proto, |n| n.proto());
                    match e {
                        Ext::Fragment { offset, more, id } => {
                            ext.extend_from_slice(&[next, 0]);
                            ext.extend_from_slice(
                                &((offset << 3) | u16::from(*more)).to_be_bytes(),
                            );
                            ext.extend_from_slice(&id.to_be_bytes());
                        }
                        _ => {
                            // 8 bytes: next header, length 0, PadN option of 4.
                            ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                        }
                    }
                }
                let first = self.ipv6_ext.first().map_or(proto, |e| e.proto());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((ext.len() + seg.len()) as u16).to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be the same family"),
        }
        f.extend_from_slice(&seg);
        f
    }
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 198, 18, 0, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 2]);
    f
}

/// A frame of another ethertype (LLDP).
pub fn non_ip() -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&0x88CCu16.to_be_bytes());
    f.extend_from_slice(&[0u8; 46]);
    f
}

pub fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(ip) => ip,
        Err(_) => panic!("`{s}` is not an IP address"),
    }
}

fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => {}
    }
    p
}

/// The Internet checksum over several slices laid end to end.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use etherparse::{LinkExtSlice, NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    /// (VLAN ids, source, destination, transport ports or ICMP type) as
    /// etherparse reads them; panics if a checksum is wrong.
    fn read_back(frame: &[u8]) -> (Vec<u16>, IpAddr, IpAddr, (u16, u16)) {
        let p = SlicedPacket::from_ethernet(frame)
            .unwrap_or_else(|e| panic!("etherparse cannot read {frame:02x?}: {e}"));
        let vlans = p
            .link_exts
            .iter()
            .filter_map(|x| match x {
                LinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
                LinkExtSlice::Macsec(_) => None,
            })
            .collect();
        let (src, dst, src_raw, dst_raw) = match &p.net {
            Some(NetSlice::Ipv4(v4)) => {
                let h = v4.header();
                assert_eq!(
                    h.to_header().calc_header_checksum(),
                    h.header_checksum(),
                    "IPv4 header checksum"
                );
                let (s, d) = (h.source(), h.destination());
                (IpAddr::from(s), IpAddr::from(d), s.to_vec(), d.to_vec())
            }
            Some(NetSlice::Ipv6(v6)) => {
                let h = v6.header();
                let (s, d) = (h.source(), h.destination());
                (IpAddr::from(s), IpAddr::from(d), s.to_vec(), d.to_vec())
            }
            other => panic!("not IP: {other:?}"),
        };
        let v4 = |b: &[u8]| <[u8; 4]>::try_from(b).expect("an IPv4 address is 4 bytes");
        let v6 = |b: &[u8]| <[u8; 16]>::try_from(b).expect("an IPv6 address is 16 bytes");
        let ports = match &p.transport {
            Some(TransportSlice::Udp(u)) => {
                let h = u.to_header();
                let want = if src.is_ipv4() {
                    h.calc_checksum_ipv4_raw(v4(&src_raw), v4(&dst_raw), u.payload())
                } else {
                    h.calc_checksum_ipv6_raw(v6(&src_raw), v6(&dst_raw), u.payload())
                };
                assert_eq!(Ok(u.checksum()), want, "UDP checksum");
                (u.source_port(), u.destination_port())
            }
            Some(TransportSlice::Tcp(t)) => {
                let want = if src.is_ipv4() {
                    t.calc_checksum_ipv4(v4(&src_raw), v4(&dst_raw))
                } else {
                    t.calc_checksum_ipv6(v6(&src_raw), v6(&dst_raw))
                };
                assert_eq!(Ok(t.checksum()), want, "TCP checksum");
                (t.source_port(), t.destination_port())
            }
            Some(TransportSlice::Icmpv4(i)) => {
                assert_eq!(
                    i.icmp_type().calc_checksum(i.payload()),
                    i.checksum(),
                    "ICMP checksum"
                );
                (u16::from(i.type_u8()), 0)
            }
            Some(TransportSlice::Icmpv6(i)) => {
                assert!(
                    i.is_checksum_valid(v6(&src_raw), v6(&dst_raw)),
                    "ICMPv6 checksum"
                );
                (u16::from(i.type_u8()), 0)
            }
            other => panic!("no TCP, UDP or ICMP: {other:?}"),
        };
        (vlans, src, dst, ports)
    }

    #[test]
    fn etherparse_reads_every_kind_of_frame_back_with_valid_checksums() {
        let mut v4_options = Packet::udp("198.18.0.1", "198.18.0.2", 1000, 3478).payload(5);
        v4_options.ipv4_options = vec![1, 1, 1];
        let cases = vec![
            (
                "udp",
                Packet::udp("198.18.0.1", "198.18.0.2", 40_000, 3478).payload(10),
                vec![],
                (40_000, 3478),
            ),
            ("ipv4 options", v4_options, vec![], (1000, 3478)),
            (
                "tcp syn",
                Packet::tcp("198.18.0.1", "198.18.0.2", 40_001, 5061),
                vec![],
                (40_001, 5061),
            ),
            (
                "tcp in qinq",
                Packet::tcp("2001:db8::1", "2001:db8::2", 40_002, 443)
                    .vlan(ETH_P_8021AD, 10)
                    .vlan(ETH_P_8021Q, 20),
                vec![10, 20],
                (40_002, 443),
            ),
            (
                "udp6 after extension headers",
                Packet::udp("2001:db8::1", "2001:db8::2", 40_003, 50_000)
                    .payload(3)
                    .ext(Ext::HopByHop)
                    .ext(Ext::DestOpts),
                vec![],
                (40_003, 50_000),
            ),
            (
                "icmp echo",
                Packet::icmp("198.18.0.1", "198.18.0.2", 8).payload(7),
                vec![],
                (8, 0),
            ),
            (
                "icmpv6 echo",
                Packet::icmp("2001:db8::1", "2001:db8::2", 128),
                vec![],
                (128, 0),
            ),
        ];
        for (name, packet, vlans, ports) in cases {
            let got = read_back(&packet.build());
            assert_eq!(
                got,
                (vlans, packet.src, packet.dst, ports),
                "{name}: what etherparse reads differs from what was built"
            );
        }
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = Packet::udp("198.18.0.1", "198.18.0.2", 40000, 3478)
            .payload(10)
            .build();
        assert_eq!(
            checksum(&[&f[14..34]]),
            0,
            "a header with its checksum sums to zero"
        );
        assert_eq!(f.len(), 14 + 20 + 8 + 10);
    }

    #[test]
    fn vlan_and_ext_headers_land_where_expected() {
        let f = Packet::udp("2001:db8::1", "2001:db8::2", 1, 2)
            .vlan(ETH_P_8021AD, 10)
            .vlan(ETH_P_8021Q, 20)
            .ext(Ext::HopByHop)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
                id: 7,
            })
            .build();
        assert_eq!(&f[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&f[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&f[20..22], &ETH_P_IPV6.to_be_bytes());
        let ip6 = 22;
        assert_eq!(f[ip6 + 6], 0, "first next-header is hop-by-hop");
        assert_eq!(f[ip6 + 40], 44, "hop-by-hop points at the fragment header");
        assert_eq!(f[ip6 + 48], 17, "fragment header points at UDP");
    }
}
