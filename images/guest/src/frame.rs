//! Building and reading the few Ethernet/IPv4/UDP/TCP frames of the `net`
//! scenario. No options, no fragments, no VLANs.

/// Ethernet header bytes.
pub const ETH_LEN: usize = 14;
/// IPv4 header bytes (IHL 5).
pub const IP_LEN: usize = 20;
/// UDP header bytes.
pub const UDP_LEN: usize = 8;
/// TCP header bytes (data offset 5).
pub const TCP_LEN: usize = 20;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IP protocol numbers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// TCP flags PSH | ACK.
const TCP_PSH_ACK: u8 = 0x18;

/// Payload byte `i` of every frame the scenario sends: `'a' + i % 26`.
pub fn payload_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

/// The two ends of an IPv4 flow and their Ethernet addresses.
#[derive(Clone, Copy)]
pub struct Ends {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn get16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// The Internet checksum (RFC 1071) of `bytes` (even length here).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |&b| u32::from(b));
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes the Ethernet and IPv4 headers for an L4 segment of `l4_len` bytes
/// of protocol `proto`, with IP id `id`, TTL 64, DF clear and a correct
/// header checksum.
fn eth_ip(buf: &mut [u8], e: &Ends, proto: u8, id: u16, l4_len: usize) {
    buf[0..6].copy_from_slice(&e.dst_mac);
    buf[6..12].copy_from_slice(&e.src_mac);
    put16(buf, 12, ETHERTYPE_IPV4);
    let ip = &mut buf[ETH_LEN..ETH_LEN + IP_LEN];
    ip[0] = 0x45; // version 4, IHL 5
    ip[1] = 0; // DSCP/ECN
    put16(ip, 2, (IP_LEN + l4_len) as u16);
    put16(ip, 4, id);
    put16(ip, 6, 0); // flags, fragment offset
    ip[8] = 64; // TTL
    ip[9] = proto;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&e.src_ip);
    ip[16..20].copy_from_slice(&e.dst_ip);
    let c = checksum(ip);
    put16(ip, 10, c);
}

/// Writes into `buf` an Ethernet/IPv4/UDP frame of `e` with `payload_len`
/// payload bytes (`payload_byte(i)`) and UDP checksum 0 (none); returns its
/// length, `ETH_LEN + IP_LEN + UDP_LEN + payload_len`.
pub fn udp(buf: &mut [u8], e: &Ends, id: u16, payload_len: usize) -> usize {
    let l4 = UDP_LEN + payload_len;
    eth_ip(buf, e, PROTO_UDP, id, l4);
    let u = ETH_LEN + IP_LEN;
    put16(buf, u, e.src_port);
    put16(buf, u + 2, e.dst_port);
    put16(buf, u + 4, l4 as u16);
    put16(buf, u + 6, 0);
    for i in 0..payload_len {
        buf[u + UDP_LEN + i] = payload_byte(i);
    }
    u + l4
}

/// Writes into `buf` an Ethernet/IPv4/TCP segment of `e` with sequence
/// number `seq`, ack 0, flags PSH|ACK, window 65535, checksum 0 (wrong on
/// purpose: the host drops it without answering) and `payload_len` payload
/// bytes; returns its length, `ETH_LEN + IP_LEN + TCP_LEN + payload_len`.
pub fn tcp(buf: &mut [u8], e: &Ends, id: u16, seq: u32, payload_len: usize) -> usize {
    let l4 = TCP_LEN + payload_len;
    eth_ip(buf, e, PROTO_TCP, id, l4);
    let t = ETH_LEN + IP_LEN;
    put16(buf, t, e.src_port);
    put16(buf, t + 2, e.dst_port);
    put32(buf, t + 4, seq);
    put32(buf, t + 8, 0); // ack
    buf[t + 12] = 5 << 4; // data offset 5
    buf[t + 13] = TCP_PSH_ACK;
    put16(buf, t + 14, 0xffff); // window
    put16(buf, t + 16, 0); // checksum
    put16(buf, t + 18, 0); // urgent pointer
    for i in 0..payload_len {
        buf[t + TCP_LEN + i] = payload_byte(i);
    }
    t + l4
}

/// Writes a UDP frame of `e` with `payload` into `buf`; its length.
pub fn udp_with(buf: &mut [u8], e: &Ends, id: u16, payload: &[u8]) -> usize {
    let n = udp(buf, e, id, payload.len());
    buf[ETH_LEN + IP_LEN + UDP_LEN..n].copy_from_slice(payload);
    n
}

/// If `f` is an IPv4 (IHL 5) UDP datagram from `src_ip:src_port` to port
/// `dst_port`, its payload (by the UDP length, within the frame).
pub fn udp_payload(f: &[u8], src_ip: [u8; 4], src_port: u16, dst_port: u16) -> Option<&[u8]> {
    let u = ETH_LEN + IP_LEN;
    if f.len() < u + UDP_LEN
        || get16(f, 12) != ETHERTYPE_IPV4
        || f[ETH_LEN] != 0x45
        || f[ETH_LEN + 9] != PROTO_UDP
        || f[ETH_LEN + 12..ETH_LEN + 16] != src_ip
        || get16(f, u) != src_port
        || get16(f, u + 2) != dst_port
    {
        return None;
    }
    let len = usize::from(get16(f, u + 4));
    if len < UDP_LEN || u + len > f.len() {
        return None;
    }
    Some(&f[u + UDP_LEN..u + len])
}

/// Parses `aa:bb:cc:dd:ee:ff` (hexadecimal, either case).
pub fn parse_mac(s: &[u8]) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(|&b| b == b':');
    for byte in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        let mut v = 0u8;
        for &c in p {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            v = v << 4 | d;
        }
        *byte = v;
    }
    parts.next().is_none().then_some(mac)
}
