//! A packet being handled: its program context (where the frame is) and
//! this CPU's counters. Parsing, NAT and forwarding take any [`Frame`], so the
//! XDP programs and the TC program (mirrored flows) share one copy of that
//! code, and everything counts through the one lookup made per packet.

use aya_ebpf::{
    cty::c_void,
    programs::{TcContext, XdpContext},
    EbpfContext,
};

use crate::counters::Stats;

/// A packet in linear memory between `data` and `data_end`.
pub trait Frame: EbpfContext {
    /// Whether parsing moves the per-protocol counters. Only the ingress XDP
    /// program counts them; the others see packets it has already counted.
    const COUNTS: bool;
    /// Whether the packet is an skb, whose `CHECKSUM_COMPLETE` sum must
    /// follow every rewrite.
    const SKB: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The interface the packet arrived on.
    fn arrival_ifindex(&self) -> u32;
    /// This CPU's counters.
    fn stats(&self) -> Stats;
}

/// A program's context and this CPU's counters; `COUNTS` as in [`Frame`].
pub struct Pkt<'a, C, const COUNTS: bool> {
    pub ctx: &'a C,
    pub stats: Stats,
}

/// A packet of the ingress XDP program.
pub type Ingress<'a> = Pkt<'a, XdpContext, true>;
/// A packet of an XDP program that leaves the protocol counters alone (the
/// mirror guard).
pub type Uncounted<'a> = Pkt<'a, XdpContext, false>;
/// A packet of the TC program.
pub type Skb<'a> = Pkt<'a, TcContext, false>;

impl<C: EbpfContext, const COUNTS: bool> EbpfContext for Pkt<'_, C, COUNTS> {
    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.ctx.as_ptr()
    }
}

impl<const COUNTS: bool> Frame for Pkt<'_, XdpContext, COUNTS> {
    const COUNTS: bool = COUNTS;
    const SKB: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn stats(&self) -> Stats {
        self.stats
    }
}

impl<const COUNTS: bool> Frame for Pkt<'_, TcContext, COUNTS> {
    const COUNTS: bool = COUNTS;
    const SKB: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }
    /// At TC ingress the skb's device is the one it arrived on. (Its
    /// `ingress_ifindex` is 0 under `BPF_PROG_TEST_RUN`, where the device is
    /// the namespace's loopback, so FIB lookups would fail there.)
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed to the program.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }
    #[inline(always)]
    fn stats(&self) -> Stats {
        self.stats
    }
}
