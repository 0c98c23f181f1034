//! Reading the frame: a window with a bounds check before every read
//! (`Frame`), the network layer summary the decision needs (`L3`), and the
//! verifier workarounds that keep those checks provable.

use classifier_common::{
    Addr, MAX_IPV6_EXT_HEADERS, PCLASS_ICMP, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, Reason,
};

pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const ETH_P_IP: u32 = 0x0800;

pub(crate) const ETH_P_IPV6: u32 = 0x86DD;

pub(crate) const ETH_P_ARP: u32 = 0x0806;

pub(crate) const ETH_P_8021Q: u32 = 0x8100;

pub(crate) const ETH_P_8021AD: u32 = 0x88A8;

pub(crate) const IPPROTO_HOPOPTS: u8 = 0;

pub(crate) const IPPROTO_ICMP: u8 = 1;

pub(crate) const IPPROTO_TCP: u8 = 6;

pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) const IPPROTO_ROUTING: u8 = 43;

pub(crate) const IPPROTO_FRAGMENT: u8 = 44;

pub(crate) const IPPROTO_ICMPV6: u8 = 58;

pub(crate) const IPPROTO_DSTOPTS: u8 = 60;

pub(crate) const TCP_HLEN: usize = 20;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

pub(crate) const UDP_HLEN: usize = 8;

/// A read-only window on the frame. Every accessor checks bounds against
/// `data_end` itself, so no read can leave the packet whatever the offset.
pub(crate) struct Frame {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The program's context (`xdp_md` or `__sk_buff`), for the rare paths
    /// that copy the frame into an event.
    pub(crate) ctx: *mut core::ffi::c_void,
}

impl Frame {
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    pub(crate) fn ptr<T>(&self, off: usize) -> Option<*const T> {
        let p = self.start + off;
        if p + size_of::<T>() > self.end {
            return None;
        }
        Some(p as *const T)
    }

    /// Copies `N` bytes at `off` out of the packet in one checked read. Reading
    /// a whole header through the pointer that was checked keeps the verifier
    /// able to prove the access, whatever LLVM does with the offsets.
    #[inline(always)]
    pub(crate) fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `ptr` checked that all N bytes lie inside the packet.
        self.ptr::<[u8; N]>(off)
            .map(|p| unsafe { core::ptr::read_unaligned(p) })
    }
}

/// The IP packet's end, hidden from LLVM: it knows `end <= data_end`, and
/// would otherwise use a check against `end` to delete the pointer bounds
/// check that follows, which the verifier needs to see.
#[inline(always)]
pub(crate) fn opaque(v: &usize) -> usize {
    // SAFETY: a plain read of a valid reference.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// An address as four words in memory order (IPv4 mapped into IPv6): read
/// from the packet with four loads, carried in four registers, and written
/// into a key only where a map needs one.
pub(crate) type Words = [u32; 4];

/// The `::ffff:0:0/96` prefix's third word, in memory order.
pub(crate) const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A word of the packet at `p + at`, in memory order.
#[inline(always)]
pub(crate) fn word_at(p: *const u8, at: usize) -> u32 {
    // SAFETY: the caller checked that `p .. p + at + 4` lies in the packet.
    unsafe { core::ptr::read_unaligned(p.add(at).cast::<u32>()) }
}

/// A big-endian u16 of the packet at `p + at`: one load, not two byte loads.
#[inline(always)]
pub(crate) fn be16_at(p: *const u8, at: usize) -> u16 {
    // SAFETY: the caller checked that `p .. p + at + 2` lies in the packet.
    u16::from_be(unsafe { core::ptr::read_unaligned(p.add(at).cast::<u16>()) })
}

/// The Ethernet header and up to `MAX_VLAN_TAGS` 802.1Q / 802.1ad tags:
/// `(ethertype, offset of its header)`, the ethertype widened to `u32`. A
/// frame cut short of its ethertype or a tag takes `$short` (the caller's
/// own exit); one with a tag past the bound gives that tag's ethertype
/// (read no further), which the full parser counts as `vlan_depth`.
///
/// The one walk of the link layer, for the fast path, the full parser and
/// the egress recorder, written once and expanded in each: a helper that
/// returned its outcome as a value merged the cut-short exit into the
/// untagged frame's straight line and cost the fast path 0.3-0.9 ns a
/// packet (A/B in one bench run; CHANGELOG.md).
macro_rules! ethernet {
    ($frame:expr, $short:expr) => {{
        let Some(eth) = $frame.ptr::<[u8; $crate::parse::ETH_HLEN]>(0) else {
            $short
        };
        let mut ethertype = u32::from($crate::parse::be16_at(eth.cast::<u8>(), 12));
        let mut off = $crate::parse::ETH_HLEN;
        for _ in 0..classifier_common::MAX_VLAN_TAGS {
            if ethertype != $crate::parse::ETH_P_8021Q && ethertype != $crate::parse::ETH_P_8021AD {
                break;
            }
            let Some(tag) = $frame.ptr::<[u8; 4]>(off) else {
                $short
            };
            ethertype = u32::from($crate::parse::be16_at(tag.cast::<u8>(), 2));
            off += 4;
        }
        (ethertype, off)
    }};
}
pub(crate) use ethernet;

/// The network layer summary the transport decision needs. The addresses
/// stay in the packet: only the lookups that need one (flows, profiles,
/// management, fragments) read it, so that the common packet, decided by
/// one port lookup, neither loads nor spills 32 bytes of addresses.
pub(crate) struct L3 {
    /// Offset of the source address; the destination follows it.
    pub(crate) addrs: usize,
    pub(crate) proto: u8,
    /// Offset of the transport header.
    pub(crate) l4: usize,
    /// End of the IP packet (total length / payload length): headers past it
    /// are padding, not the packet's.
    pub(crate) end: usize,
    /// The protocol a fragment is remembered under: the IPv4 protocol, or the
    /// IPv6 fragment header's next header (what a later fragment carries too).
    pub(crate) frag_proto: u8,
    /// Fragment identification, and whether this is a fragment at all.
    pub(crate) frag_id: u32,
    pub(crate) fragment: bool,
    /// A fragment other than the first: it carries no transport header.
    pub(crate) later_fragment: bool,
    pub(crate) v6: bool,
}

impl L3 {
    /// The map key form of the source address (IPv4 mapped into IPv6).
    #[inline(always)]
    pub(crate) fn src(&self, frame: &Frame) -> Addr {
        self.addr(frame, self.addrs)
    }

    #[inline(always)]
    pub(crate) fn dst(&self, frame: &Frame) -> Addr {
        self.addr(frame, self.addrs + if self.v6 { 16 } else { 4 })
    }

    /// The address at `off`, read again from the packet. The parser checked
    /// that both addresses lie inside it; the check here is for the verifier
    /// and cannot fail (the unspecified address would stand in if it did).
    #[inline(always)]
    pub(crate) fn addr(&self, frame: &Frame, off: usize) -> Addr {
        let words: Words = if self.v6 {
            match frame.ptr::<Words>(off) {
                // SAFETY: `ptr` checked the 16 bytes.
                Some(p) => unsafe { core::ptr::read_unaligned(p) },
                None => [0; 4],
            }
        } else {
            match frame.ptr::<u32>(off) {
                // SAFETY: `ptr` checked the 4 bytes.
                Some(p) => [0, 0, V4_MAPPED, unsafe { core::ptr::read_unaligned(p) }],
                None => [0; 4],
            }
        };
        // SAFETY: same size, and every bit pattern is a valid byte array.
        unsafe { core::mem::transmute::<Words, Addr>(words) }
    }
}

/// The IPv4 header at `off`. `packet_len` is the whole packet's length:
/// the frame's for XDP; for the egress recorder the socket buffer's, whose
/// linear part (the frame) may hold only the headers of a GSO packet.
#[inline(always)]
pub(crate) fn parse_ipv4(frame: &Frame, off: usize, packet_len: usize) -> Result<L3, Reason> {
    let hp = frame
        .ptr::<[u8; 20]>(off)
        .ok_or(Reason::Malformed)?
        .cast::<u8>();
    // SAFETY: `ptr` checked the 20 bytes of the fixed header.
    let version_ihl = unsafe { *hp };
    let ihl = (version_ihl & 0x0f) as usize * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::Malformed);
    }
    // Bounds of the whole header, options included.
    frame.ptr::<u8>(off + ihl - 1).ok_or(Reason::Malformed)?;
    let total = be16_at(hp, 2) as usize;
    if total < ihl || off + total > packet_len {
        return Err(Reason::Malformed);
    }
    let frag = be16_at(hp, 6);
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    // SAFETY: inside the checked 20 bytes.
    let proto = unsafe { *hp.add(9) };
    Ok(L3 {
        addrs: off + 12,
        proto,
        l4: off + ihl,
        end: off + total,
        frag_proto: proto,
        frag_id: be16_at(hp, 4) as u32,
        fragment: more || offset != 0,
        later_fragment: offset != 0,
        v6: false,
    })
}

/// The IPv6 header at `off` and its extension headers (`packet_len` as for
/// [`parse_ipv4`]).
#[inline(always)]
pub(crate) fn parse_ipv6(frame: &Frame, off: usize, packet_len: usize) -> Result<L3, Reason> {
    // The fixed header, addresses included, lies in the packet.
    frame.ptr::<[u8; 40]>(off).ok_or(Reason::Malformed)?;
    let h = frame.bytes::<8>(off).ok_or(Reason::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let payload = be16(&h, 4) as usize;
    if off + 40 + payload > packet_len {
        return Err(Reason::Malformed);
    }
    let mut l3 = L3 {
        addrs: off + 8,
        proto: h[6],
        l4: off + 40,
        end: off + 40 + payload,
        frag_proto: 0,
        frag_id: 0,
        fragment: false,
        later_fragment: false,
        v6: true,
    };
    // Walk extension headers up to the bound; one more iteration sees whether
    // the chain goes on past it.
    for i in 0..=MAX_IPV6_EXT_HEADERS {
        let is_ext = matches!(
            l3.proto,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
        );
        if !is_ext {
            // A chain whose last header runs past the payload is malformed.
            if l3.l4 > opaque(&l3.end) {
                return Err(Reason::Malformed);
            }
            return Ok(l3);
        }
        if i == MAX_IPV6_EXT_HEADERS {
            break;
        }
        // Every extension header is at least 8 bytes long, inside the packet.
        if l3.l4 + 8 > opaque(&l3.end) {
            return Err(Reason::Malformed);
        }
        let e = frame.bytes::<8>(l3.l4).ok_or(Reason::Malformed)?;
        if l3.proto == IPPROTO_FRAGMENT {
            l3.frag_proto = e[0];
            l3.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
            l3.fragment = true;
            l3.later_fragment = be16(&e, 2) >> 3 != 0;
            l3.l4 += 8;
        } else {
            l3.l4 += (e[1] as usize + 1) * 8;
        }
        l3.proto = e[0];
        if l3.later_fragment {
            // Headers after the fragment header belong to the fragmentable
            // part; only the first fragment carries them.
            return Ok(l3);
        }
    }
    Err(Reason::ExtHeaders)
}

#[inline(always)]
pub(crate) fn pclass_of(proto: u8) -> u32 {
    match proto {
        IPPROTO_TCP => PCLASS_TCP,
        IPPROTO_UDP => PCLASS_UDP,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => PCLASS_ICMP,
        _ => PCLASS_OTHER,
    }
}
