//! What accounting needs from an Ethernet frame, bounds-checked.
//!
//! [`parse`] takes the frame *after* the 12-byte virtio-net header and reads
//! the source MAC and, for IPv4 TCP and UDP, the 5-tuple; for TCP also the
//! sequence number and the payload length. One 802.1Q VLAN tag is skipped.
//! Every read is checked: arbitrary guest bytes never panic.

use std::net::Ipv4Addr;

/// Length of an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// An IPv4 TCP or UDP flow, as seen from the sender of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u8,
}

impl FiveTuple {
    /// The same flow seen from the other end (a reply's tuple).
    pub fn reversed(&self) -> Self {
        Self {
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
        }
    }
}

/// The sequence range of a TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes (IP total length less the IP and TCP headers).
    pub payload_len: u32,
}

/// What [`parse`] found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// For IPv4 TCP/UDP (first fragment or unfragmented): the flow.
    pub flow: Option<FiveTuple>,
    /// For TCP: the segment.
    pub tcp: Option<TcpSegment>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn mac(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at.checked_add(6)?)?.try_into().ok()
}

/// Parses an Ethernet frame; `None` if it is shorter than an Ethernet header.
pub fn parse(frame: &[u8]) -> Option<FrameInfo> {
    let dst_mac = mac(frame, 0)?;
    let src_mac = mac(frame, 6)?;
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = ETH_HLEN;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        l3 = ETH_HLEN + 4;
    }
    let mut info = FrameInfo {
        dst_mac,
        src_mac,
        flow: None,
        tcp: None,
    };
    if ethertype == ETHERTYPE_IPV4 {
        if let Some((flow, tcp)) = frame.get(l3..).and_then(ipv4) {
            info.flow = Some(flow);
            info.tcp = tcp;
        }
    }
    Some(info)
}

/// The flow (and TCP segment) of an IPv4 packet; `None` when it is not a
/// first fragment of TCP or UDP, or is malformed.
fn ipv4(ip: &[u8]) -> Option<(FiveTuple, Option<TcpSegment>)> {
    let vihl = *ip.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(be16(ip, 2)?);
    if total < ihl {
        return None;
    }
    // A later fragment carries no L4 header.
    if be16(ip, 6)? & 0x1fff != 0 {
        return None;
    }
    let proto = *ip.get(9)?;
    let src_ip = Ipv4Addr::from(be32(ip, 12)?);
    let dst_ip = Ipv4Addr::from(be32(ip, 16)?);
    let l4 = ip.get(ihl..)?;
    let flow = FiveTuple {
        src_ip,
        dst_ip,
        src_port: be16(l4, 0)?,
        dst_port: be16(l4, 2)?,
        proto,
    };
    match proto {
        IPPROTO_UDP => Some((flow, None)),
        IPPROTO_TCP => {
            let seq = be32(l4, 4)?;
            let thl = usize::from(*l4.get(12)? >> 4) * 4;
            if thl < 20 {
                return None;
            }
            // The IP length says how long the segment is (the frame may be
            // padded); never more than what was actually sent.
            let seg_len = (total - ihl).min(l4.len());
            let payload = seg_len.saturating_sub(thl);
            let payload_len = u32::try_from(payload).unwrap_or(u32::MAX);
            Some((flow, Some(TcpSegment { seq, payload_len })))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Ethernet + IPv4 + TCP/UDP frame from `src_mac`.
    pub(crate) fn ipv4_frame(src_mac: [u8; 6], flow: &FiveTuple, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0xff];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let l4_len = if flow.proto == IPPROTO_TCP { 20 } else { 8 };
        let total = u16::try_from(20 + l4_len + payload.len()).unwrap();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, flow.proto, 0, 0]);
        f.extend_from_slice(&flow.src_ip.octets());
        f.extend_from_slice(&flow.dst_ip.octets());
        f.extend_from_slice(&flow.src_port.to_be_bytes());
        f.extend_from_slice(&flow.dst_port.to_be_bytes());
        if flow.proto == IPPROTO_TCP {
            f.extend_from_slice(&seq.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            f.extend_from_slice(&(u16::try_from(8 + payload.len()).unwrap()).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(payload);
        f
    }

    pub(crate) fn tcp(a: [u8; 4], ap: u16, b: [u8; 4], bp: u16) -> FiveTuple {
        FiveTuple {
            src_ip: Ipv4Addr::from(a),
            dst_ip: Ipv4Addr::from(b),
            src_port: ap,
            dst_port: bp,
            proto: IPPROTO_TCP,
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn parses_tcp_five_tuple_sequence_and_payload() {
        let flow = tcp([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80);
        let f = ipv4_frame(MAC, &flow, 1000, &[7; 100]);

        let info = parse(&f).unwrap();

        assert_eq!(info.src_mac, MAC);
        assert_eq!(info.flow, Some(flow));
        assert_eq!(
            info.tcp,
            Some(TcpSegment {
                seq: 1000,
                payload_len: 100
            })
        );
        assert_eq!(flow.reversed().reversed(), flow);
        assert_eq!(flow.reversed().src_port, 80);
    }

    #[test]
    fn parses_udp_and_ignores_padding() {
        let flow = FiveTuple {
            proto: IPPROTO_UDP,
            ..tcp([10, 0, 0, 2], 5353, [10, 0, 0, 1], 53)
        };
        let mut f = ipv4_frame(MAC, &flow, 0, &[1, 2, 3]);
        f.extend_from_slice(&[0; 20]); // Ethernet padding

        let info = parse(&f).unwrap();

        assert_eq!((info.flow, info.tcp), (Some(flow), None));
    }

    #[test]
    fn padding_does_not_count_as_tcp_payload() {
        let flow = tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 2);
        let mut f = ipv4_frame(MAC, &flow, 5, &[]);
        f.extend_from_slice(&[0; 6]);

        assert_eq!(parse(&f).unwrap().tcp.unwrap().payload_len, 0);
    }

    #[test]
    fn non_ip_short_and_fragmented_frames_have_no_flow() {
        assert!(parse(&[0; 13]).is_none());
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp).unwrap().flow, None);
        let flow = tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 2);
        let mut frag = ipv4_frame(MAC, &flow, 0, &[0; 8]);
        frag[ETH_HLEN + 6..ETH_HLEN + 8].copy_from_slice(&0x0001u16.to_be_bytes());
        assert_eq!(parse(&frag).unwrap().flow, None);
        let truncated = ipv4_frame(MAC, &flow, 0, &[])[..ETH_HLEN + 22].to_vec();
        assert_eq!(parse(&truncated).unwrap().flow, None);
    }

    #[test]
    fn skips_one_vlan_tag() {
        let flow = tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 2);
        let plain = ipv4_frame(MAC, &flow, 9, &[0; 4]);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);

        assert_eq!(parse(&tagged).unwrap().flow, Some(flow));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn corrupted_ipv4_frames_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            at in 0usize..100,
            byte in any::<u8>(),
            cut in 0usize..120,
        ) {
            let flow = tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 2);
            let mut f = ipv4_frame(MAC, &flow, 0, &payload);
            if let Some(b) = f.get_mut(at) {
                *b = byte;
            }
            f.truncate(cut);
            if let Some(info) = parse(&f) {
                if let Some(seg) = info.tcp {
                    prop_assert!(usize::try_from(seg.payload_len).unwrap() <= f.len());
                }
            }
        }
    }
}
