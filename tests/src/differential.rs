//! The packet parser checked differentially: the host-side mirror
//! (`splitter_common::packet::parse`) says what the XDP program must make of a
//! frame, and [`judge`] compares that with what the program did under
//! `BPF_PROG_TEST_RUN` — its verdict, the frame it left and the counters it
//! moved. Shared by the tier-2 test (a generated corpus) and the `packet`
//! fuzz target (whatever libFuzzer makes up).

use std::net::IpAddr;

use splitter_common::{
    packet::{self, Parsed, CLASS_STATS},
    service::ServiceKey,
    stats::Stat,
    FAMILY_V4, FAMILY_V6,
};
use splitter_model::plan::{addr_words, ServicePlan};

/// `XDP_DROP`, `XDP_PASS`.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Frames `BPF_PROG_TEST_RUN` takes for XDP: at least an Ethernet header, at
/// most what fits in a page with the kernel's head- and tailroom (kept well
/// below).
pub const RUNNABLE: std::ops::RangeInclusive<usize> = packet::ETH_HLEN..=2048;

/// The services the program was given, as the oracle needs them, and what
/// it knows of the namespace the program runs in.
pub struct Services {
    services: Vec<(ServiceKey, Vec<ServiceKey>)>,
    /// Addresses of the namespace's own: an endpoint's packet to one that
    /// answers no flow is the host's (`to_host`), never a client's reply.
    local: Vec<(u8, [u32; 4])>,
    /// Addresses the namespace forwards to (it has a route and a neighbour):
    /// an endpoint's packet to one is never the host's.
    forwarded: Vec<(u8, [u32; 4])>,
}

/// An address as the kernel's keys hold it: family and words.
fn key_addr(a: IpAddr) -> (u8, [u32; 4]) {
    (if a.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }, addr_words(a))
}

impl Services {
    pub fn of(plans: &[ServicePlan]) -> Services {
        let services = plans
            .iter()
            .map(|p| {
                let n = usize::from(p.table.n_endpoints);
                let eps = p.table.endpoints[..n]
                    .iter()
                    .map(|e| ServiceKey { addr: e.addr, port: e.port, proto: p.key.proto, family: e.family })
                    .collect();
                (p.key, eps)
            })
            .collect();
        Services { services, local: Vec::new(), forwarded: Vec::new() }
    }

    /// Tells the judge the namespace's own addresses (`local`) and some it
    /// forwards to (`forwarded`); without, it only checks what the program
    /// says it passed to the host for plausibility.
    pub fn on_host(mut self, local: &[IpAddr], forwarded: &[IpAddr]) -> Services {
        self.local = local.iter().copied().map(key_addr).collect();
        self.forwarded = forwarded.iter().copied().map(key_addr).collect();
        self
    }

    /// Whether `source` (address and port) is an endpoint of some service.
    fn is_endpoint(&self, source: &ServiceKey) -> bool {
        self.services.iter().any(|(_, eps)| eps.contains(source))
    }

    fn get(&self, key: &ServiceKey) -> Option<&[ServiceKey]> {
        self.services.iter().find(|(k, _)| k == key).map(|(_, eps)| eps.as_slice())
    }
}

/// What one run of the program did.
pub struct Run<'a> {
    pub action: u32,
    pub output: &'a [u8],
    /// Counter deltas, indexed by `Stat as usize`.
    pub deltas: &'a [u64],
}

/// `Err` says how the program's handling of `frame` differs from what the
/// host-side parser implies.
pub fn judge(frame: &[u8], services: &Services, run: &Run<'_>) -> Result<(), String> {
    let host = packet::parse(frame);
    let d = |s: Stat| run.deltas[s as usize];
    let mut problems = Vec::new();
    let class = host.class_stat();
    let replied = d(Stat::Replies) > 0;
    // A service's packet the NAT refused (its TTL ran out, say) may count
    // a second reason; every other frame moves exactly its own class.
    let hit = match host.result {
        Ok(Parsed::Flow(p)) => services.get(&ServiceKey::of_flow(&p.key)),
        _ => None,
    };
    for s in CLASS_STATS {
        let want = u64::from(s == class);
        let spare = u64::from(hit.is_some() && matches!(s, Stat::Truncated | Stat::BadHeader | Stat::BadLength));
        if d(s) < want || d(s) > want + spare {
            problems.push(format!("counter {} moved by {}, the host parser says {want}", s.name(), d(s)));
        }
    }
    for family in [Stat::Ipv4, Stat::Ipv6] {
        let want = u64::from(host.family == Some(family));
        if d(family) != want {
            problems.push(format!("counter {} moved by {}, the host parser says {want}", family.name(), d(family)));
        }
    }
    let untouched = |problems: &mut Vec<String>| {
        if run.action != XDP_PASS {
            problems.push(format!("verdict {}, expected XDP_PASS", run.action));
        }
        if run.output != frame {
            problems.push("the frame was changed".to_owned());
        }
    };
    // An endpoint's packet (not a SYN: that goes to the services) to one of
    // the host's own addresses answers no client's flow: the host's.
    if let Ok(Parsed::Flow(p)) = host.result {
        let local = services.local.contains(&(p.key.family, p.key.dst_addr));
        if local && !p.is_syn() && services.is_endpoint(&ServiceKey::of_source(&p.key)) && d(Stat::ToHost) == 0 {
            problems.push(format!(
                "an endpoint's packet to the host's own address was not passed to it (to_host): verdict {}",
                run.action
            ));
        }
    }
    match (host.result, hit) {
        (Ok(Parsed::Flow(_)), _) if replied => {}
        // Too big for the next hop's link: now the ICMP error, for the stack.
        (Ok(Parsed::Flow(p)), _) if d(Stat::TooBig) > 0 => match packet::parse(run.output).result {
            Ok(Parsed::Icmp(icmp)) if icmp.key.src_addr == p.key.dst_addr && icmp.key.dst_addr == p.key.src_addr => {}
            other => problems.push(format!("a too-big packet's answer parses as {other:?}")),
        },
        // An endpoint's packet that answers no flow, to this host itself
        // (the FIB does not forward it): the host's, passed unchanged.
        (Ok(Parsed::Flow(p)), _) if d(Stat::ToHost) > 0 => {
            if !services.is_endpoint(&ServiceKey::of_source(&p.key)) {
                problems.push("passed as the host's own, but its source is no endpoint".to_owned());
            }
            if p.is_syn() {
                problems.push("a SYN passed as an endpoint's packet to the host".to_owned());
            }
            if services.forwarded.contains(&(p.key.family, p.key.dst_addr)) {
                problems.push("passed as the host's own, but the namespace forwards to its destination".to_owned());
            }
            for s in [Stat::ServicePackets, Stat::ReplyAdopted, Stat::OrphanReplies] {
                if d(s) != 0 {
                    problems.push(format!("a packet passed to the host moved {} by {}", s.name(), d(s)));
                }
            }
            untouched(&mut problems);
        }
        // An endpoint's packet that answers no flow it has: dropped.
        (Ok(Parsed::Flow(p)), _) if d(Stat::OrphanReplies) > 0 => {
            if !services.is_endpoint(&ServiceKey::of_source(&p.key)) {
                problems.push("dropped as an endpoint's orphan reply, but its source is no endpoint".to_owned());
            }
            if run.action != XDP_DROP || run.output != frame {
                problems.push(format!("an orphan reply got verdict {} (or was changed), not a drop", run.action));
            }
        }
        (Ok(Parsed::Flow(p)), Some(endpoints)) => {
            if d(Stat::ServicePackets) != 1 {
                problems.push(format!("a packet to a service moved service_packets by {}", d(Stat::ServicePackets)));
            }
            let refused = d(Stat::TtlExpired) + d(Stat::Truncated) + d(Stat::BadHeader) + d(Stat::BadLength)
                - u64::from(matches!(class, Stat::Truncated | Stat::BadHeader | Stat::BadLength));
            if refused > 0 || run.action == XDP_DROP {
                if run.output != frame {
                    problems.push("a packet the NAT refused was changed".to_owned());
                }
            } else {
                // Rewritten to one of the service's endpoints; source kept.
                match packet::parse(run.output).result {
                    Ok(Parsed::Flow(out)) => {
                        let to = ServiceKey::of_flow(&out.key);
                        if !endpoints.contains(&to) {
                            problems.push(format!("rewritten to {to:?}, not an endpoint of the service"));
                        }
                        if (out.key.src_addr, out.key.src_port) != (p.key.src_addr, p.key.src_port) {
                            problems.push("the source changed".to_owned());
                        }
                    }
                    other => problems.push(format!("the rewritten frame parses as {other:?}")),
                }
            }
        }
        (Ok(Parsed::Flow(_)), None) => {
            if d(Stat::ServicePackets) != 0 {
                problems.push("a packet to no service counted as a service's".to_owned());
            }
            untouched(&mut problems);
        }
        // An ICMP error about a flow is translated, and still passed.
        (Ok(Parsed::Icmp(_)), _) if d(Stat::IcmpTranslated) > 0 => {
            if run.action != XDP_PASS {
                problems.push(format!("a translated ICMP error got verdict {}, not XDP_PASS", run.action));
            }
        }
        // Not TCP/UDP, or malformed: counted and left to the stack.
        _ => untouched(&mut problems),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "frame {} (host parser: {:?}, family {:?}):\n  {}",
            hex(frame),
            host.result,
            host.family,
            problems.join("\n  ")
        ))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
