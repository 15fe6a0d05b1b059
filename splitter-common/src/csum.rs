//! Incremental Internet checksum updates (RFC 1624), shared by the kernel
//! rewrite path and the host tests that check it against full recomputation.
//!
//! Words are taken exactly as they sit in memory (`from_ne_bytes`) and the
//! result is stored the same way: the one's-complement sum does not depend on
//! byte order as long as every word and the checksum are read alike.

/// A running one's-complement difference: subtract old words, add new ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    pub const fn new() -> Self {
        Delta(0)
    }

    /// Replaces a 16-bit word `old` with `new`.
    #[inline(always)]
    pub const fn word(self, old: u16, new: u16) -> Self {
        Delta(self.0 + (!old) as u64 + new as u64)
    }

    /// Replaces a 32-bit field (two 16-bit words, in either order).
    #[inline(always)]
    pub const fn word32(self, old: u32, new: u32) -> Self {
        self.word(old as u16, new as u16).word((old >> 16) as u16, (new >> 16) as u16)
    }

    /// Replaces an IPv6 (or IPv4-in-word-0) address held as four `u32` words.
    #[inline(always)]
    pub const fn addr(self, old: &[u32; 4], new: &[u32; 4]) -> Self {
        self.word32(old[0], new[0]).word32(old[1], new[1]).word32(old[2], new[2]).word32(old[3], new[3])
    }

    /// The replacements as a one's-complement difference, folded to 16 bits:
    /// what a running sum over the bytes (an skb's `CHECKSUM_COMPLETE` value)
    /// must have added to stay true.
    #[inline(always)]
    pub const fn folded(self) -> u16 {
        fold(self.0)
    }

    /// The checksum field after the replacements, given its value before.
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        !fold(self.0 + (!check) as u64)
    }

    /// Like [`Delta::apply`] for UDP over IPv4, where 0 means "no checksum"
    /// and must stay 0, and a computed 0 is sent as 0xffff.
    #[inline(always)]
    pub const fn apply_udp4(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Folds a 64-bit one's-complement accumulator to 16 bits (bounded: 4 rounds
/// cover any u64, so the verifier sees no loop).
#[inline(always)]
pub const fn fold(s: u64) -> u16 {
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full RFC 1071 checksum of `bytes` as native words.
    fn full(bytes: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for c in bytes.chunks(2) {
            s += u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
        }
        !fold(s)
    }

    /// One's-complement sum (not inverted) of `bytes` as native words.
    fn sum(bytes: &[u8]) -> u16 {
        !full(bytes)
    }

    #[test]
    fn folded_delta_keeps_a_running_sum_true() {
        let mut bytes = [0u8; 64];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let before = sum(&bytes);
        let mut delta = Delta::new();
        for (at, new) in [(4usize, 0xbeefu16), (10, 0x0000), (30, 0xffff), (62, 0x1234)] {
            let old = u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
            bytes[at..at + 2].copy_from_slice(&new.to_ne_bytes());
            delta = delta.word(old, new);
        }
        let after = sum(&bytes);
        let carried = fold(before as u64 + delta.folded() as u64);
        // 0 and 0xffff are the same number in one's complement.
        let norm = |v: u16| if v == 0xffff { 0 } else { v };
        assert_eq!(norm(carried), norm(after));
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        // An IPv4 header with its checksum at bytes 10..12.
        let mut h: [u8; 20] = [0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 203, 0, 113, 10];
        let c = full(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        assert_eq!(full(&h), 0, "a header with its checksum sums to zero");

        let old_dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
        let new_dst = u32::from_ne_bytes([198, 51, 100, 20]);
        let old_ttl = u16::from_ne_bytes([h[8], h[9]]);
        let new_ttl = u16::from_ne_bytes([h[8] - 1, h[9]]);
        let check = u16::from_ne_bytes([h[10], h[11]]);
        let updated = Delta::new().word32(old_dst, new_dst).word(old_ttl, new_ttl).apply(check);

        h[16..20].copy_from_slice(&new_dst.to_ne_bytes());
        h[8] -= 1;
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(updated, full(&h));
    }

    #[test]
    fn random_rewrites_match_recomputation() {
        // Deterministic xorshift so the test is repeatable.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut buf = [0u8; 40];
            for b in buf.iter_mut() {
                *b = next() as u8;
            }
            buf[0] = 0;
            buf[1] = 0;
            let c = full(&buf);
            buf[0..2].copy_from_slice(&c.to_ne_bytes());
            // Rewrite a 16-byte "address" at 8..24 and a "port" at 24..26.
            let old = crate::flow::ipv6_words(buf[8..24].try_into().unwrap());
            let new: [u32; 4] = core::array::from_fn(|_| next() as u32);
            let old_port = u16::from_ne_bytes([buf[24], buf[25]]);
            let new_port = next() as u16;
            let got = Delta::new().addr(&old, &new).word(old_port, new_port).apply(c);
            for (i, w) in new.iter().enumerate() {
                buf[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_ne_bytes());
            }
            buf[24..26].copy_from_slice(&new_port.to_ne_bytes());
            buf[0..2].copy_from_slice(&[0, 0]);
            let want = full(&buf);
            // 0x0000 and 0xffff are the same one's-complement value.
            assert!(got == want || (got ^ want) == 0xffff && (got == 0 || want == 0), "got {got:#x} want {want:#x}");
        }
    }

    #[test]
    fn udp4_zero_checksum_stays_zero() {
        assert_eq!(Delta::new().word(1, 2).apply_udp4(0), 0);
        assert_ne!(Delta::new().word(1, 2).apply_udp4(0x1234), 0);
    }
}
