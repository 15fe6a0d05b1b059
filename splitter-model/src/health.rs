//! Endpoint health, pure: an endpoint's verdict from its check results and
//! its traffic ([`Tracker`]), and what a service serves given its endpoints'
//! verdicts — each version's ring over its healthy endpoints (only a dead
//! endpoint's slots move), and the share of a version with none (given to
//! the others, or kept: [`served_bps`]). The same functions serve the
//! kernel's tables (l4, [`serve_plan`]) and the proxy's (l7). The agent
//! runs the checks, feeds the results in and installs what comes out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};
use splitter_common::service::{SelectionTable, BPS};

use crate::{
    config::{
        health::{Health, WhenVersionDown},
        Service,
    },
    plan::{basis_points, endpoint_addr, maglev, slot_table, ServicePlan},
};

/// The endpoints out of service, by service.
pub type Down = BTreeMap<String, BTreeSet<SocketAddr>>;

/// One endpoint's health as the agent keeps and shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracker {
    /// The verdict: it gets new flows and requests.
    pub up: bool,
    /// Since when (Unix milliseconds) the verdict holds.
    pub since_ms: u64,
    /// Why it is down (or came back), as the log said it.
    pub reason: String,
    /// The last failed check's error, kept after it passes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the checks alone say.
    checks_up: bool,
    /// Consecutive passed and failed checks.
    passed: u32,
    failed: u32,
    /// Ejected by its traffic until then (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ejected_until_ms: Option<u64>,
}

/// A verdict that changed: the endpoint went down or came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
    pub reason: String,
}

impl Tracker {
    /// A tracker starting `up` (or down, for `reason`) at `now_ms`.
    pub fn new(up: bool, reason: &str, now_ms: u64) -> Tracker {
        Tracker {
            up,
            since_ms: now_ms,
            reason: reason.to_owned(),
            last_error: None,
            checks_up: up,
            passed: 0,
            failed: 0,
            ejected_until_ms: None,
        }
    }

    /// Whether traffic has it ejected now.
    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.is_some()
    }

    /// One active check's result: `unhealthy_after` failures in a row take
    /// a healthy endpoint out, `healthy_after` passes in a row bring it back.
    pub fn check(&mut self, result: Result<(), String>, h: &Health, now_ms: u64) -> Option<Transition> {
        match result {
            Ok(()) => {
                self.passed = self.passed.saturating_add(1);
                self.failed = 0;
                if !self.checks_up && self.passed >= h.healthy_after {
                    self.checks_up = true;
                    let why = format!("{} checks passed in a row", self.passed);
                    return self.settle(now_ms, &why);
                }
            }
            Err(e) => {
                self.failed = self.failed.saturating_add(1);
                self.passed = 0;
                let why = format!("{} checks failed in a row, the last: {e}", self.failed);
                self.last_error = Some(e);
                if self.checks_up && self.failed >= h.unhealthy_after {
                    self.checks_up = false;
                    return self.settle(now_ms, &why);
                }
            }
        }
        None
    }

    /// Its traffic failed too often in a row (`why`): out until `until_ms`.
    pub fn eject(&mut self, why: &str, until_ms: u64, now_ms: u64) -> Option<Transition> {
        self.ejected_until_ms = Some(self.ejected_until_ms.map_or(until_ms, |u| u.max(until_ms)));
        self.last_error = Some(why.to_owned());
        self.settle(now_ms, &format!("ejected: {why}"))
    }

    /// Ends an ejection whose time is over.
    pub fn expire(&mut self, now_ms: u64) -> Option<Transition> {
        match self.ejected_until_ms {
            Some(until) if now_ms >= until => {
                self.ejected_until_ms = None;
                self.settle(now_ms, "its ejection is over")
            }
            _ => None,
        }
    }

    /// The verdict from the checks and the ejection; a transition when it
    /// changed.
    fn settle(&mut self, now_ms: u64, why: &str) -> Option<Transition> {
        let up = self.checks_up && self.ejected_until_ms.is_none();
        if up == self.up {
            return None;
        }
        self.up = up;
        self.since_ms = now_ms;
        self.reason = why.to_owned();
        Some(Transition { up, reason: why.to_owned() })
    }
}

/// Counts failures in a row of an endpoint's traffic (passive checks): a
/// failure adds one, a success starts again. True when `threshold` is reached
/// (the count starts again then too).
pub fn passive_step(run: &mut u32, failed: bool, threshold: u32) -> bool {
    if !failed {
        *run = 0;
        return false;
    }
    *run += 1;
    if *run >= threshold {
        *run = 0;
        return true;
    }
    false
}

/// The failures an l4 endpoint's counters show over one interval, for the
/// passive check: its resets (`replies` of the interval that were all
/// resets); or, when nothing at all came back from it over this interval
/// and the one before, the connections it was given in the one before
/// (`earlier_flows`, with `earlier_replies` back then: they had a whole
/// interval to be answered, and none was). `None`: it answered something
/// that was not a reset, so its run of failures is broken.
pub fn l4_failures(earlier_flows: u64, earlier_replies: u64, replies: u64, resets: u64) -> Option<u64> {
    if replies > resets {
        return None;
    }
    if replies == 0 {
        return Some(if earlier_replies == 0 { earlier_flows } else { 0 });
    }
    Some(resets)
}

/// A version's share as served: with `redistribute`, a version with no
/// healthy endpoint (`down[v]`) gives its basis points to the versions that
/// have one, in proportion to their basis points (equally when they all
/// have none); nothing changes when every version is down, or with `keep`.
pub fn served_bps(bps: &[u32], down: &[bool], policy: WhenVersionDown) -> Vec<u32> {
    let losing = bps.iter().zip(down).any(|(b, d)| *d && *b > 0);
    let alive: Vec<usize> = (0..bps.len()).filter(|v| !down[*v]).collect();
    if policy == WhenVersionDown::Keep || !losing || alive.is_empty() {
        return bps.to_vec();
    }
    let mut weights: Vec<u32> = (0..bps.len()).map(|v| if down[v] { 0 } else { bps[v] }).collect();
    if weights.iter().all(|w| *w == 0) {
        for v in &alive {
            weights[*v] = 1;
        }
    }
    basis_points(&weights)
}

/// A Maglev ring over `names` whose unhealthy entries (`up[i]` false) have
/// their slots given to the healthy ones by a ring over those alone: the
/// healthy endpoints keep every slot they had, so only flows that would
/// have gone to a dead endpoint go elsewhere, and a recovered endpoint gets
/// back exactly its own slots. All unhealthy (or all healthy): the full ring.
pub fn ring_over_healthy(names: &[String], up: &[bool]) -> Vec<u8> {
    let full = maglev(names);
    let healthy: Vec<usize> = (0..names.len()).filter(|i| up[*i]).collect();
    if healthy.is_empty() || healthy.len() == names.len() {
        return full;
    }
    let survivors: Vec<String> = healthy.iter().map(|i| names[*i].clone()).collect();
    let fallback = maglev(&survivors);
    full.iter()
        .zip(fallback)
        .map(|(owner, spare)| if up[usize::from(*owner)] { *owner } else { healthy[usize::from(spare)] as u8 })
        .collect()
}

/// One version as served, for `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionServed {
    pub version: String,
    /// Basis points by the weights, and as served.
    pub configured_bps: u32,
    pub served_bps: u32,
    pub endpoints: usize,
    pub endpoints_down: usize,
    /// Why served differs from configured, or what the down endpoints mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Which versions have no healthy endpoint, and each version's endpoints'
/// verdicts, of a service whose endpoints `is_down` judges.
fn verdicts(svc: &Service, is_down: &dyn Fn(&SocketAddr) -> bool) -> Vec<Vec<bool>> {
    svc.versions.values().map(|eps| eps.iter().map(|e| !is_down(e)).collect()).collect()
}

/// What serving `svc` with configured basis points `bps` comes to, version
/// by version, given the endpoints `is_down` judges.
pub fn describe(svc: &Service, bps: &[u32], is_down: &dyn Fn(&SocketAddr) -> bool) -> Vec<VersionServed> {
    let up = verdicts(svc, is_down);
    let down: Vec<bool> = up.iter().map(|u| !u.iter().any(|x| *x)).collect();
    let policy = svc.health.as_ref().map_or(WhenVersionDown::Keep, |h| h.when_version_down);
    let served = served_bps(bps, &down, policy);
    let all_down = down.iter().all(|d| *d);
    svc.versions
        .keys()
        .enumerate()
        .map(|(v, name)| {
            let n_down = up[v].iter().filter(|u| !**u).count();
            let why = if down[v] && served[v] < bps[v] {
                Some(
                    "no healthy endpoint: its share goes to the other versions (when_version_down: redistribute)"
                        .into(),
                )
            } else if down[v] && all_down && bps[v] > 0 {
                Some(
                    "no healthy endpoint in any version: nothing to move its share to; its new connections fail".into(),
                )
            } else if down[v] && bps[v] > 0 {
                Some(
                    "no healthy endpoint: its share is kept (when_version_down: keep); its new connections fail".into(),
                )
            } else if served[v] > bps[v] {
                Some("takes the share of a version with no healthy endpoint".into())
            } else if n_down > 0 {
                Some(format!("{n_down} of {} endpoints down: their share goes to the healthy ones", up[v].len()))
            } else {
                None
            };
            VersionServed {
                version: name.clone(),
                configured_bps: bps[v],
                served_bps: served[v],
                endpoints: up[v].len(),
                endpoints_down: n_down,
                why,
            }
        })
        .collect()
}

/// The kernel plan of `svc` as served given the endpoints `is_down` judges:
/// rings over the healthy endpoints, a down version's slots given to the
/// others (`served_bps`), moving the fewest slots from `plan`'s layout. The
/// plan's `bps` stay the configured ones. Unchanged without `health:`.
pub fn serve_plan(plan: &ServicePlan, svc: &Service, is_down: &dyn Fn(&SocketAddr) -> bool) -> ServicePlan {
    let Some(h) = &svc.health else { return plan.clone() };
    let mut out = plan.clone();
    let up = verdicts(svc, is_down);
    let mut first = 0usize;
    for (v, eps) in svc.versions.values().enumerate() {
        if up[v].iter().any(|u| !*u) {
            let names: Vec<String> = eps.iter().map(ToString::to_string).collect();
            for (slot, local) in ring_over_healthy(&names, &up[v]).into_iter().enumerate() {
                out.table.rings[v][slot] = (first + usize::from(local)) as u8;
            }
        }
        first += eps.len();
    }
    let down: Vec<bool> = up.iter().map(|u| !u.iter().any(|x| *x)).collect();
    let served = served_bps(&plan.bps, &down, h.when_version_down);
    if served != plan.bps {
        out.table.slot_version = *slot_table(&served, Some(&plan.table.slot_version));
    }
    out
}

/// The endpoints a live kernel table has out of service, so a restarted
/// agent starts where the last one left off: an endpoint its version's ring
/// no longer points at while the ring points at another, and every endpoint
/// of a version that weighs something (`weighs`) but owns no slot.
pub fn down_in_table(
    table: &SelectionTable,
    versions: &[String],
    weighs: &dyn Fn(&str) -> bool,
) -> BTreeSet<SocketAddr> {
    let n = usize::from(table.n_endpoints).min(table.endpoints.len());
    let mut down = BTreeSet::new();
    for (v, name) in versions.iter().enumerate().take(table.rings.len()) {
        let members: Vec<usize> = (0..n).filter(|i| usize::from(table.endpoints[*i].version) == v).collect();
        if members.is_empty() {
            continue;
        }
        let owns_slots = table.slot_version.iter().any(|s| usize::from(*s) == v);
        if !owns_slots && weighs(name) {
            down.extend(members.iter().map(|i| endpoint_addr(&table.endpoints[*i])));
            continue;
        }
        let mut referenced: BTreeMap<usize, usize> = BTreeMap::new();
        for e in table.rings[v].iter() {
            *referenced.entry(usize::from(*e)).or_default() += 1;
        }
        if members.iter().any(|i| referenced.contains_key(i)) {
            down.extend(
                members.iter().filter(|i| !referenced.contains_key(i)).map(|i| endpoint_addr(&table.endpoints[*i])),
            );
        }
    }
    debug_assert!(table.slot_version.len() == BPS);
    down
}

#[cfg(test)]
mod tests {
    use splitter_common::{
        flow_hash,
        service::{ring_slot, version_slot, RING_SIZE, SEED_ENDPOINT, SEED_VERSION},
        FlowKey,
    };

    use super::*;
    use crate::plan::{plan_service, Previous};

    fn health(yaml: &str) -> Health {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn thresholds_flip_the_verdict_and_only_they_do() {
        let h = health("{unhealthy_after: 3, healthy_after: 2}");
        let mut t = Tracker::new(true, "configured", 0);
        let fail = || Err("connection refused".to_owned());
        assert_eq!(t.check(fail(), &h, 1), None);
        assert_eq!(t.check(fail(), &h, 2), None);
        // A pass in between starts the count again.
        assert_eq!(t.check(Ok(()), &h, 3), None);
        assert_eq!(t.check(fail(), &h, 4), None);
        assert_eq!(t.check(fail(), &h, 5), None);
        let down = t.check(fail(), &h, 6).expect("the third failure in a row");
        assert!(!down.up && down.reason.contains("3 checks failed") && down.reason.contains("refused"), "{down:?}");
        assert_eq!((t.up, t.since_ms), (false, 6));
        assert_eq!(t.check(Ok(()), &h, 7), None);
        assert_eq!(t.check(fail(), &h, 8), None);
        assert_eq!(t.check(Ok(()), &h, 9), None);
        assert!(t.check(Ok(()), &h, 10).expect("two passes in a row").up);
        assert_eq!(t.last_error.as_deref(), Some("connection refused"), "kept after it passes again");
    }

    #[test]
    fn an_ejection_holds_until_its_time_and_the_checks_still_count() {
        let h = health("{unhealthy_after: 1, healthy_after: 1}");
        let mut t = Tracker::new(true, "configured", 0);
        assert!(!t.eject("5 failures in a row (502)", 30_000, 10).unwrap().up);
        // Passing checks do not end an ejection.
        assert_eq!(t.check(Ok(()), &h, 20), None);
        assert_eq!(t.expire(29_999), None);
        assert!(t.expire(30_000).unwrap().up);
        // Ejected while the checks also fail: back only when both allow.
        t.eject("again", 40_000, 31_000);
        assert_eq!(t.check(Err("timeout".into()), &h, 32_000), None);
        assert_eq!(t.expire(40_000), None, "its checks still fail");
        assert!(t.check(Ok(()), &h, 41_000).unwrap().up);
    }

    #[test]
    fn passive_runs_count_failures_in_a_row() {
        let mut run = 0;
        let outcomes = [true, true, false, true, true, true, true, true, true];
        let ejected: Vec<bool> = outcomes.iter().map(|f| passive_step(&mut run, *f, 5)).collect();
        assert_eq!(ejected, [false, false, false, false, false, false, false, true, false]);
        assert_eq!(l4_failures(10, 0, 0, 0), Some(10), "new connections and no answer at all");
        assert_eq!(l4_failures(10, 30, 0, 0), Some(0), "quiet now, but it answered the interval before");
        assert_eq!(l4_failures(10, 0, 4, 4), Some(4), "only resets came back");
        assert_eq!(l4_failures(10, 0, 40, 1), None, "it answers");
    }

    #[test]
    fn a_down_version_gives_its_share_in_proportion_or_keeps_it() {
        use WhenVersionDown::*;
        assert_eq!(served_bps(&[5000, 4500, 500], &[false, false, true], Redistribute), [5263, 4737, 0]);
        assert_eq!(served_bps(&[5000, 4500, 500], &[false, false, true], Keep), [5000, 4500, 500]);
        assert_eq!(served_bps(&[5000, 5000], &[true, true], Redistribute), [5000, 5000], "nowhere to go");
        // After a flip to green, green dies: blue (weight 0) takes it all.
        assert_eq!(served_bps(&[0, 10000], &[false, true], Redistribute), [10000, 0]);
        assert_eq!(served_bps(&[0, 0, 10000], &[false, false, true], Redistribute), [5000, 5000, 0]);
        // A down version without weight changes nothing.
        assert_eq!(served_bps(&[10000, 0], &[false, true], Redistribute), [10000, 0]);
    }

    #[test]
    fn only_a_dead_endpoints_slots_move_and_they_come_back_exactly() {
        let names: Vec<String> = (0..7).map(|i| format!("198.51.100.{i}:8080")).collect();
        let full = maglev(&names);
        let mut up = vec![true; 7];
        up[3] = false;
        let served = ring_over_healthy(&names, &up);
        for s in 0..RING_SIZE {
            if full[s] == 3 {
                assert_ne!(served[s], 3, "slot {s} still on the dead endpoint");
            } else {
                assert_eq!(served[s], full[s], "slot {s} of a healthy endpoint moved");
            }
        }
        // The dead endpoint's slots are spread over the others.
        let spread: BTreeSet<u8> = (0..RING_SIZE).filter(|s| full[*s] == 3).map(|s| served[s]).collect();
        assert_eq!(spread.len(), 6, "{spread:?}");
        assert_eq!(ring_over_healthy(&names, &[true; 7]), full);
        assert_eq!(ring_over_healthy(&names, &[false; 7]), full);
    }

    fn svc(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const SHOP: &str = "{listen: 203.0.113.10:80, protocol: tcp, health: {}, versions: {blue: [198.51.100.10:8080, 198.51.100.11:8080], green: [198.51.100.20:8080], red: [198.51.100.30:8080]}, weights: {blue: 60, green: 30, red: 10}}";

    /// Where the kernel sends a flow under `table`.
    fn place(table: &SelectionTable, i: u32) -> usize {
        let b = i.to_be_bytes();
        let k = FlowKey::v4([192, 0, b[2], b[3]], 1024 + (i % 60000) as u16, [203, 0, 113, 10], 80, 6);
        let v = table.slot_version[version_slot(flow_hash(&k, SEED_VERSION))] as usize;
        table.rings[v][ring_slot(flow_hash(&k, SEED_ENDPOINT))] as usize
    }

    #[test]
    fn serving_around_a_dead_endpoint_moves_only_its_flows() {
        let s = svc(SHOP);
        let plan = plan_service("shop", &s, None).unwrap();
        let dead: SocketAddr = "198.51.100.11:8080".parse().unwrap();
        let served = serve_plan(&plan, &s, &|e| *e == dead);
        assert_eq!(served.table.slot_version, plan.table.slot_version, "no version lost its last endpoint");
        for i in 0..20_000 {
            let (before, after) = (place(&plan.table, i), place(&served.table, i));
            if before == 1 {
                assert_eq!(after, 0, "flow {i}: blue's dead endpoint's flows go to blue's other");
            } else {
                assert_eq!(after, before, "flow {i} moved although its endpoint lives");
            }
        }
        assert_eq!(down_in_table(&served.table, &plan.versions, &|_| true), BTreeSet::from([dead]));
        assert!(down_in_table(&plan.table, &plan.versions, &|_| true).is_empty());
        // Without health: the plan as it was.
        let plain = svc(&SHOP.replace("health: {}, ", ""));
        assert!(serve_plan(&plan, &plain, &|e| *e == dead).table.rings == plan.table.rings);
    }

    #[test]
    fn a_dead_version_is_served_by_the_others_and_a_replan_changes_nothing() {
        let s = svc(SHOP);
        let plan = plan_service("shop", &s, None).unwrap();
        let green: SocketAddr = "198.51.100.20:8080".parse().unwrap();
        let served = serve_plan(&plan, &s, &|e| *e == green);
        let owned = |t: &SelectionTable, v: u8| t.slot_version.iter().filter(|x| **x == v).count();
        assert_eq!([owned(&served.table, 0), owned(&served.table, 1), owned(&served.table, 2)], [8571, 0, 1429]);
        for slot in 0..BPS {
            if plan.table.slot_version[slot] != 1 {
                assert_eq!(served.table.slot_version[slot], plan.table.slot_version[slot], "slot {slot} moved");
            }
        }
        // A restarted agent plans from the live table and serves the same.
        let versions = plan.versions.clone();
        let weighs = |v: &str| s.weights.get(v).is_some_and(|w| *w > 0);
        assert_eq!(down_in_table(&served.table, &versions, &weighs), BTreeSet::from([green]));
        let replanned =
            plan_service("shop", &s, Some(Previous { versions: &versions, slots: &served.table.slot_version }))
                .unwrap();
        let again = serve_plan(&replanned, &s, &|e| *e == green);
        assert!(again.table.slot_version == served.table.slot_version, "a re-plan moved slots");
        // Back: green gets its share again.
        let back = serve_plan(&replanned, &s, &|_| false);
        assert_eq!(owned(&back.table, 1), 3000);
        // keep: nothing moves.
        let keep = svc(&SHOP.replace("health: {}", "health: {when_version_down: keep}"));
        assert!(serve_plan(&plan, &keep, &|e| *e == green).table.slot_version == plan.table.slot_version);
        let why = describe(&s, &plan.bps, &|e| *e == green);
        assert_eq!((why[1].configured_bps, why[1].served_bps), (3000, 0));
        assert!(why[1].why.as_deref().unwrap().contains("redistribute"), "{why:?}");
        assert!(why[0].why.as_deref().unwrap().contains("takes the share"), "{why:?}");
    }
}
