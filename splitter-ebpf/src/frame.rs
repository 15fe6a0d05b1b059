//! What parsing, NAT and forwarding need from a packet's context, so the XDP
//! programs and the TC program (mirrored flows) share one copy of that code.

use aya_ebpf::{
    cty::c_void,
    programs::{TcContext, XdpContext},
    EbpfContext,
};

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
}

impl Frame for XdpContext {
    const COUNTS: bool = true;
    const SKB: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }
}

impl Frame for TcContext {
    const COUNTS: bool = false;
    const SKB: bool = true;
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    /// At TC ingress the skb's device is the one it arrived on. (Its
    /// `ingress_ifindex` is 0 under `BPF_PROG_TEST_RUN`, where the device is
    /// the namespace's loopback, so FIB lookups would fail there.)
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        // SAFETY: the context pointer the kernel passed to the program.
        unsafe { (*self.skb.skb).ifindex }
    }
}

/// An XDP context whose packets are not counted (the mirror guard).
pub struct Uncounted<'a>(pub &'a XdpContext);

impl EbpfContext for Uncounted<'_> {
    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }
}

impl Frame for Uncounted<'_> {
    const COUNTS: bool = false;
    const SKB: bool = false;
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn arrival_ifindex(&self) -> u32 {
        Frame::arrival_ifindex(self.0)
    }
}
