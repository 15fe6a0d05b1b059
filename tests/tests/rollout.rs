//! Tier 3, `splitter rollout` end to end: the real agent, real clients
//! sending traffic the whole time, canaries that are healthy, that answer 500
//! (l7) or that reset every connection (l4). A healthy canary reaches 100 %;
//! a bad one is rolled back by the agent on its own, in the step it fails,
//! and gets no traffic afterwards.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    process::Output,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use splitter_model::rollout::{Rollout, State};
use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, serve_http_failing, Client},
    netns::NetNs,
    serve::{ask_version, serve_tcp},
    topology::Topology,
    wait::eventually,
};
use splitter_tests::{agent::Agent, netns::topology};

const API: &str = "203.0.113.10:8080";
const SHOP: &str = "203.0.113.10:80";

/// api (l7): v1 on blue, v2 and bad (answers 500) on green, all on v1;
/// shop (l4): blue, and rst on green (resets every connection), all on blue.
fn config() -> Config {
    let api = Service::l7(API).on_blue("v1", 8081).on_green("v2", 8081).on_green("bad", 8083).weights(&[("v1", 100)]);
    let shop = Service::tcp(SHOP).on_blue("blue", 8080).on_green("rst", 8090).weights(&[("blue", 100)]);
    Topology::config().service("api", api).service("shop", shop)
}

/// A TCP server that resets every connection it accepts (SO_LINGER 0).
fn serve_resets(ns: &NetNs, port: u16) {
    let listener = ns.run(|| TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))).expect("reset server");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
            drop(conn);
        }
    });
}

fn setup() -> (Topology, Agent) {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    serve_http_failing(&topo.green, 8083, "bad").unwrap();
    serve_tcp(&topo.blue, 8080, "blue").unwrap();
    serve_resets(&topo.green, 8090);
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let agent = Agent::start(&topo.lb, &config().to_string());
    (topo, agent)
}

/// What a traffic thread shares: when to stop, and how many requests or
/// connections it has made (answered or not).
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    made: AtomicUsize,
}

impl Traffic {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until the thread has made `n` requests or connections.
    fn wait_made(&self, n: usize) {
        let made = || self.made.load(Ordering::Relaxed);
        eventually(&format!("{n} requests or connections made"), Duration::from_secs(30), made, |m| *m >= n);
    }

    /// Runs `traffic` on its own thread while `during` runs, then stops it.
    fn around<T: Send, R>(traffic: impl FnOnce(&Traffic) -> T + Send, during: impl FnOnce(&Traffic) -> R) -> (R, T) {
        let t = Traffic::default();
        std::thread::scope(|s| {
            let thread = s.spawn(|| traffic(&t));
            let r = during(&t);
            t.stop.store(true, Ordering::Relaxed);
            (r, thread.join().expect("traffic thread"))
        })
    }
}

/// Sends l7 requests in batches of 20 until stopped (bounded: 2 minutes);
/// backend name (or "error") → answers.
fn l7_traffic(topo: &Topology, traffic: &Traffic) -> BTreeMap<String, usize> {
    let client = Client::new(&topo.client);
    let api: SocketAddr = API.parse().unwrap();
    let start = std::time::Instant::now();
    let mut seen = BTreeMap::new();
    while traffic.running() && start.elapsed() < Duration::from_secs(120) {
        for a in client.send_all(&topo.client, (0..20).map(|_| get(api, "/", &[])).collect(), 4, false) {
            let key = match a {
                Ok(a) if a.status.is_success() => a.backend,
                Ok(a) => format!("{} {}", a.backend, a.status.as_u16()),
                Err(_) => "error".into(),
            };
            *seen.entry(key).or_insert(0) += 1;
        }
        traffic.made.fetch_add(20, Ordering::Relaxed);
        // Pacing: a short pause between batches.
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Opens l4 connections until stopped (bounded); version (or "reset") → count.
fn l4_traffic(topo: &Topology, traffic: &Traffic) -> BTreeMap<String, usize> {
    let vip: SocketAddr = SHOP.parse().unwrap();
    topo.client.run(|| {
        let start = std::time::Instant::now();
        let mut seen = BTreeMap::new();
        while traffic.running() && start.elapsed() < Duration::from_secs(120) {
            let answer = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                ask_version(&c)
            });
            *seen.entry(answer.unwrap_or_else(|_| "reset".into())).or_insert(0) += 1;
            traffic.made.fetch_add(1, Ordering::Relaxed);
            // Pacing: a 5 ms pause between connections.
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

/// Runs `splitter rollout ARGS` (following it) while `traffic` runs; the
/// rollout starts once traffic flows (20 requests or connections made).
fn rollout_under<T: Send>(agent: &Agent, args: &[&str], traffic: impl FnOnce(&Traffic) -> T + Send) -> (Output, T) {
    Traffic::around(traffic, |t| {
        t.wait_made(20);
        agent
            .cli()
            .arg("rollout")
            .args(args)
            .arg("--socket")
            .arg(&agent.control_socket)
            .output()
            .expect("run splitter rollout")
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The weights the agent serves `service` with, from `status`.
fn weights(agent: &Agent, service: &str) -> BTreeMap<String, u32> {
    let mut info = agent.status().agent.expect("an agent answers");
    info.weights.remove(service).unwrap_or_else(|| panic!("no weights of {service} in {:?}", info.weights))
}

/// The service's last rollout, from `status`.
fn rollout_state(agent: &Agent, service: &str) -> Rollout {
    let mut info = agent.status().agent.expect("an agent answers");
    info.rollouts.remove(service).unwrap_or_else(|| panic!("no rollout of {service} in {:?}", info.rollouts))
}

#[test]
fn a_healthy_canary_is_promoted_step_by_step_to_100_percent() {
    let (topo, agent) = setup();
    let args = ["api", "--to", "v2", "--steps", "20,50,100", "--interval", "2s", "--min-requests", "10"];
    let (out, seen) = rollout_under(&agent, &args, |t| l7_traffic(&topo, t));
    assert!(out.status.success(), "{}\n{}", text(&out), agent.log());
    assert!(text(&out).contains("promoted to v2: step 3/3 at 100%"), "{}", text(&out));
    assert_eq!(weights(&agent, "api"), [("bad".into(), 0), ("v1".into(), 0), ("v2".into(), 10_000)].into());
    assert!(seen.get("v2").copied().unwrap_or(0) > 0, "{seen:?}");
    assert_eq!(seen.get("error"), None, "no request failed during the rollout: {seen:?}");
    assert_eq!(rollout_state(&agent, "api").state, State::Promoted);
}

#[test]
fn a_canary_answering_500_is_rolled_back_in_its_first_step_and_gets_nothing_after() {
    let (topo, agent) = setup();
    let args = [
        "api",
        "--to",
        "bad",
        "--steps",
        "20,50,100",
        "--interval",
        "20s",
        "--min-requests",
        "10",
        "--max-error-rate",
        "5%",
    ];
    let (out, seen) = rollout_under(&agent, &args, |t| l7_traffic(&topo, t));
    assert!(!out.status.success(), "a rolled-back rollout fails the command: {}", text(&out));
    assert!(text(&out).contains("rolled back: step 1 (20%): error rate"), "{}", text(&out));
    assert!(seen.get("bad 500").copied().unwrap_or(0) >= 10, "the canary was tried: {seen:?}");
    let r = rollout_state(&agent, "api");
    assert!(matches!(r.state, State::RolledBack { .. }) && r.step == 0, "{r:?}");
    assert_eq!(weights(&agent, "api"), [("bad".into(), 0), ("v1".into(), 100), ("v2".into(), 0)].into());
    // No further traffic to it.
    let client = Client::new(&topo.client);
    let after =
        client.send_all(&topo.client, (0..100).map(|_| get(API.parse().unwrap(), "/", &[])).collect(), 4, false);
    assert!(after.iter().all(|a| a.as_ref().is_ok_and(|a| a.backend == "v1")), "after the rollback: {after:?}");
    assert!(agent.log().contains("rollout ROLLED BACK"), "{}", agent.log());
}

#[test]
fn an_l4_canary_resetting_connections_is_rolled_back() {
    let (topo, agent) = setup();
    let args = [
        "shop",
        "--to",
        "rst",
        "--steps",
        "30,100",
        "--interval",
        "20s",
        "--min-requests",
        "10",
        "--max-error-rate",
        "10%",
    ];
    let (out, seen) = rollout_under(&agent, &args, |t| l4_traffic(&topo, t));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back: step 1 (30%): error rate"), "{}\n{seen:?}", text(&out));
    assert!(seen.get("reset").copied().unwrap_or(0) >= 10, "{seen:?}");
    assert_eq!(weights(&agent, "shop"), [("blue".into(), 100), ("rst".into(), 0)].into());
    let ((), after) = Traffic::around(|t| l4_traffic(&topo, t), |t| t.wait_made(50));
    assert_eq!(after.keys().collect::<Vec<_>>(), ["blue"], "after the rollback: {after:?}");
}

#[test]
fn pause_resume_abort_and_a_restart_steer_it_and_bad_requests_are_refused() {
    let (topo, agent) = setup();
    let run = |args: &[&str]| agent.control(&[&["rollout"][..], args].concat());
    let (ok, out, err) = run(&["api", "--to", "v2", "--steps", "10,100", "--interval", "60s", "--detach"]);
    assert!(ok, "{out}{err}");
    assert_eq!(weights(&agent, "api")["v2"], 1000, "the first step is served at once");
    assert_eq!(rollout_state(&agent, "api").state, State::Running);
    for (args, want) in
        [(&["api", "--to", "v2", "--detach"][..], "already in progress"), (&["api", "--resume"][..], "nothing to do")]
    {
        let (ok, out, err) = run(args);
        assert!(!ok && err.contains(want), "{args:?}: {out}{err}");
    }
    let (ok, _, err) = agent.control(&["weight", "api", "v1=5"]);
    assert!(!ok && err.contains("rollout in progress"), "manual weights wait for the rollout: {err}");
    // An agent restart brings the rollout back paused, at its step.
    let mut agent = agent;
    agent.restart(&topo.lb).expect("restart");
    let r = rollout_state(&agent, "api");
    let State::Paused { why } = &r.state else { panic!("paused: {r:?}") };
    assert!(why.contains("agent restarted"), "{r:?}");
    assert_eq!(weights(&agent, "api")["v2"], 1000, "its step's weights are served as they were");
    let run = |args: &[&str]| agent.control(&[&["rollout"][..], args].concat());
    assert!(run(&["api", "--resume", "--detach"]).0);
    assert_eq!(rollout_state(&agent, "api").state, State::Running);
    assert!(run(&["api", "--pause"]).0);
    let r = rollout_state(&agent, "api");
    assert!(matches!(r.state, State::Paused { .. }), "{r:?}");
    assert!(run(&["api", "--resume", "--detach"]).0);
    assert_eq!(rollout_state(&agent, "api").state, State::Running);
    let (ok, out, _) = run(&["api", "--abort"]);
    assert!(ok && out.contains("aborted"), "{out}");
    assert_eq!(weights(&agent, "api"), [("bad".into(), 0), ("v1".into(), 100), ("v2".into(), 0)].into());
    for (args, want) in [
        (&["api", "--to", "v2", "--steps", "50,10,100"][..], "rising"),
        (&["api", "--to", "v2", "--steps", "10,50"][..], "last must be 100"),
        (&["api", "--to", "v9"][..], "no version \"v9\""),
        (&["nope", "--to", "v2"][..], "no service \"nope\""),
        (&["api", "--to", "v2", "--interval", "1x"][..], "unit must be"),
    ] {
        let (ok, out, err) = run(args);
        assert!(!ok && err.contains(want), "{args:?}: want {want:?}, got {out}{err}");
    }
}

#[test]
fn a_rollout_resumed_after_a_restart_is_judged_on_the_new_agents_counts_and_promoted() {
    let (topo, agent) = setup();
    let run = |agent: &Agent, args: &[&str]| agent.control(&[&["rollout"][..], args].concat());
    // v2 answers half the requests for a while, then none: the first agent
    // has counted a lot of v2 before its rollout starts.
    assert!(agent.control(&["weight", "api", "v2=100"]).0);
    let ((), _) = Traffic::around(|t| l7_traffic(&topo, t), |t| t.wait_made(400));
    assert!(agent.control(&["weight", "api", "v2=0"]).0);
    let args = ["api", "--to", "v2", "--steps", "50,100", "--interval", "2s", "--min-requests", "20", "--detach"];
    let (ok, out, err) = run(&agent, &args);
    assert!(ok, "{out}{err}");
    let old_base = rollout_state(&agent, "api").base.canary.placed;
    assert!(old_base >= 100, "v2's requests before the rollout: {old_base}");
    let mut agent = agent;
    agent.restart(&topo.lb).expect("restart");
    assert!(run(&agent, &["api", "--resume", "--detach"]).0);
    // Judged on what this agent counts (its counters start at 0): with the
    // old agent's counts as its base, the step would see no canary request
    // until this agent had counted past them.
    let r = eventually(
        "a tick of the resumed rollout",
        Duration::from_secs(5),
        || rollout_state(&agent, "api"),
        |r| r.elapsed_ms > 0,
    );
    assert!(r.base.canary.placed < old_base / 2, "re-based on this agent's counts: {r:?}");
    let (r, _) = Traffic::around(
        |t| l7_traffic(&topo, t),
        |_| {
            eventually(
                "the rollout promoted",
                Duration::from_secs(20),
                || rollout_state(&agent, "api"),
                |r| r.state.is_over(),
            )
        },
    );
    assert_eq!(r.state, State::Promoted, "{r:?}\nagent log:\n{}", agent.log());
}
