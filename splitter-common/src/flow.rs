//! The flow key the parser produces once per packet, and the flow hash both
//! sides compute from it.
//!
//! Addresses and ports are kept exactly as they sit in the packet (network byte
//! order); an IPv4 address occupies word 0 of its array and words 1..4 are
//! zero. The hash reads the key as native-endian `u32` words, so host code that
//! builds a key with [`FlowKey::v4`] / [`FlowKey::v6`] hashes it exactly as the
//! kernel program does (both are little-endian: x86_64 / `bpfel`).

use bytemuck::{Pod, Zeroable};

/// `FlowKey::family` for IPv4.
pub const FAMILY_V4: u8 = 4;
/// `FlowKey::family` for IPv6.
pub const FAMILY_V6: u8 = 6;

/// A transport 5-tuple, as seen on the wire in the client → service direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    /// Source address, raw network-order bytes read as native `u32` words.
    pub src_addr: [u32; 4],
    /// Destination address, same layout as `src_addr`.
    pub dst_addr: [u32; 4],
    /// Source port, network byte order (0 for protocols without ports).
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding; always zero so keys compare and hash bytewise.
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 4);

#[cfg(feature = "user")]
// SAFETY: FlowKey is repr(C), has no implicit padding (asserted above) and every
// bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}

/// Reads 4 network-order octets as the native `u32` word the kernel loads.
#[inline(always)]
pub const fn word(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Reads an IPv6 address's 16 network-order octets as the four native `u32`
/// words the kernel loads (the layout of `FlowKey` and `ServiceKey` addresses).
#[inline(always)]
pub const fn ipv6_words(o: [u8; 16]) -> [u32; 4] {
    [
        word([o[0], o[1], o[2], o[3]]),
        word([o[4], o[5], o[6], o[7]]),
        word([o[8], o[9], o[10], o[11]]),
        word([o[12], o[13], o[14], o[15]]),
    ]
}

impl FlowKey {
    /// Key of an IPv4 flow; ports in host order (stored in network order).
    pub const fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> Self {
        FlowKey {
            src_addr: [word(src), 0, 0, 0],
            dst_addr: [word(dst), 0, 0, 0],
            src_port: sport.to_be(),
            dst_port: dport.to_be(),
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    /// Key of an IPv6 flow; ports in host order (stored in network order).
    pub const fn v6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, proto: u8) -> Self {
        FlowKey {
            src_addr: ipv6_words(src),
            dst_addr: ipv6_words(dst),
            src_port: sport.to_be(),
            dst_port: dport.to_be(),
            proto,
            family: FAMILY_V6,
            _pad: [0; 2],
        }
    }

    /// The key as ten native-endian words, in the order the hash consumes them.
    #[inline(always)]
    pub const fn words(&self) -> [u32; 10] {
        [
            self.src_addr[0],
            self.src_addr[1],
            self.src_addr[2],
            self.src_addr[3],
            self.dst_addr[0],
            self.dst_addr[1],
            self.dst_addr[2],
            self.dst_addr[3],
            (self.src_port as u32) | ((self.dst_port as u32) << 16),
            (self.proto as u32) | ((self.family as u32) << 8),
        ]
    }
}

/// MurmurHash3 (x86, 32-bit) over the key's ten words with `seed`.
///
/// Pure and branch-free so the verifier accepts it and both sides agree; used
/// to place a new flow in the userspace-built selection tables.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let w = key.words();
    let mut h = seed;
    let mut i = 0;
    while i < w.len() {
        h = murmur_round(h, w[i]);
        i += 1;
    }
    fmix32(h ^ (w.len() as u32 * 4))
}

#[inline(always)]
const fn murmur_round(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        let b = i.to_be_bytes();
        FlowKey::v4([192, 0, b[2], b[3]], 1024 + (i % 50000) as u16, [203, 0, 113, 10], 80, 6)
    }

    #[test]
    fn v4_layout_matches_the_wire() {
        let k = FlowKey::v4([192, 0, 2, 1], 0x1234, [203, 0, 113, 10], 80, 6);
        let bytes = bytemuck::bytes_of(&k);
        assert_eq!(&bytes[0..4], &[192, 0, 2, 1]);
        assert_eq!(&bytes[4..16], &[0; 12]);
        assert_eq!(&bytes[16..20], &[203, 0, 113, 10]);
        assert_eq!(&bytes[32..34], &[0x12, 0x34], "ports are stored in network order");
        assert_eq!(&bytes[34..36], &[0, 80]);
        assert_eq!(bytes[36], 6);
        assert_eq!(bytes[37], FAMILY_V4);
    }

    #[test]
    fn ipv6_words_keep_the_octets_in_memory_order() {
        let octets = [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x10];
        const W: [u32; 4] = ipv6_words([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let w = ipv6_words(octets);
        assert_eq!(bytemuck::bytes_of(&w), &octets, "the words hold the octets as they sit in the packet");
        assert_eq!(w[0], word([0x20, 0x01, 0x0d, 0xb8]));
        // Both sides are little-endian (x86_64, bpfel): the first octet is the low byte.
        if cfg!(target_endian = "little") {
            assert_eq!(W, [0xb80d_0120, 0, 0, 0x0100_0000]);
        }
        assert_eq!(FlowKey::v6(octets, 1, octets, 2, 6).src_addr, w);
    }

    #[test]
    fn hash_is_deterministic_and_seeded() {
        let k = key(7);
        assert_eq!(flow_hash(&k, 1), flow_hash(&k, 1));
        assert_ne!(flow_hash(&k, 1), flow_hash(&k, 2));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = FlowKey::v6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            40000,
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            80,
            6,
        );
        let h = flow_hash(&base, 0);
        let mut variants = [base; 6];
        variants[0].src_addr[3] ^= 1;
        variants[1].dst_addr[2] ^= 1;
        variants[2].src_port ^= 1;
        variants[3].dst_port ^= 1;
        variants[4].proto = 17;
        variants[5].family = FAMILY_V4;
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(flow_hash(v, 0), h, "variant {i} collided with the base key");
        }
    }

    #[test]
    fn hash_spreads_flows_evenly_over_buckets() {
        const BUCKETS: usize = 100;
        const N: u32 = 200_000;
        let mut counts = [0u32; BUCKETS];
        for i in 0..N {
            counts[(flow_hash(&key(i), 0x5eed) % BUCKETS as u32) as usize] += 1;
        }
        let expected = (N as usize / BUCKETS) as f64;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum();
        // 99 degrees of freedom: p = 0.001 at ~148.
        assert!(chi2 < 150.0, "chi-square {chi2} says the hash is lopsided: {counts:?}");
    }
}
