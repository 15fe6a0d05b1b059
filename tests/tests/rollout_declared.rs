//! Tier 3, declared rollouts (`services.NAME.rollout`, GitOps): the real
//! agent, real l7 traffic, and edits to its config file. A declaration that
//! appears starts the rollout (shown as declared in `status`) and it walks
//! to promotion; the same file reloaded starts nothing; a changed
//! declaration starts the new one; removing it aborts an unfinished rollout
//! and the weights from before come back.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use splitter_model::{
    config::Weights,
    rollout::{Origin, Rollout, State},
};
use splitter_testkit::{
    config::Service,
    http::{get, serve_http, Client},
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology};

fn weights(v1: u32, v2: u32) -> Weights {
    [("v1".to_owned(), v1), ("v2".to_owned(), v2)].into()
}

fn config(rollout: Option<&str>) -> String {
    let api = Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 100)]);
    let api = match rollout {
        Some(r) => api.with(&format!("rollout: {r}")),
        None => api,
    };
    Topology::config().service("api", api).to_string()
}

fn rollout_of(agent: &Agent) -> Option<Rollout> {
    agent.info()?.rollouts.remove("api")
}

#[test]
fn a_declared_rollout_starts_on_reload_is_not_restarted_and_is_aborted_when_removed() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let agent = Agent::start(&topo.lb, &config(None));
    assert!(rollout_of(&agent).is_none());

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let client = Client::new(&topo.client);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
                client.send_all(&topo.client, (0..10).map(|_| get(vip(8080), "/", &[])).collect(), 2, false);
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        // The declaration appears: the rollout starts and is promoted.
        let to_v2 = "{ to: v2, steps: [50, 100], interval: 2s, gates: { max_error_rate: 5%, min_requests: 5 } }";
        assert!(agent.reload_with(&config(Some(to_v2))).contains("reloaded"), "{}", agent.log());
        let r = agent.eventually(
            "the declared rollout started",
            Duration::from_secs(5),
            || rollout_of(&agent),
            |r| r.is_some(),
        );
        assert_eq!(r.unwrap().origin, Origin::File);
        let out = agent.cli().args(["status", "--config"]).arg(&agent.config_path).output().expect("splitter status");
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(status.contains("declared in the config file (services.api.rollout)"), "{status}");
        agent.eventually(
            "promoted",
            Duration::from_secs(20),
            || rollout_of(&agent).map(|r| r.state),
            |s| s == &Some(State::Promoted),
        );
        assert_eq!(agent.info().unwrap().weights["api"], weights(0, 10_000));

        // The same file again starts nothing.
        agent.reload().expect("SIGHUP");
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(rollout_of(&agent).map(|r| r.state), Some(State::Promoted), "{}", agent.log());
        assert_eq!(agent.log().matches("declared in the config file").count(), 1, "{}", agent.log());

        // A changed declaration (back to v1, slowly) starts; removing it aborts it.
        let to_v1 = "{ to: v1, steps: [50, 100], interval: 1m }";
        assert!(agent.reload_with(&config(Some(to_v1))).contains("reloaded"));
        agent.eventually(
            "the new declaration started",
            Duration::from_secs(5),
            || rollout_of(&agent),
            |r| r.as_ref().is_some_and(|r| r.plan.to == "v1" && r.state == State::Running),
        );
        assert_eq!(agent.info().unwrap().weights["api"], weights(5_000, 5_000));
        assert!(agent.reload_with(&config(None)).contains("reloaded"));
        agent.eventually(
            "aborted",
            Duration::from_secs(5),
            || rollout_of(&agent).map(|r| r.state),
            |s| s == &Some(State::Aborted),
        );
        assert_eq!(agent.info().unwrap().weights["api"], weights(0, 10_000), "the weights from before");
        assert!(agent.log().contains("its declared rollout is gone: aborted"), "{}", agent.log());

        // An operator's rollout works beside it, and is not touched by the file.
        let (ok, out, err) =
            agent.control(&["rollout", "api", "--to", "v1", "--steps", "50,100", "--interval", "1m", "--detach"]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("started by an operator"), "{out}");
        agent.reload().expect("SIGHUP");
        std::thread::sleep(Duration::from_secs(2));
        let r = rollout_of(&agent).unwrap();
        assert_eq!((r.origin, r.state), (Origin::Operator, State::Running));
        stop.store(true, Ordering::Relaxed);
    });
}
