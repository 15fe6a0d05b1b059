//! Tier 3, rollout webhooks (`analysis.webhooks`, Flagger's kinds): the real
//! agent calls a webhook receiver the test runs (over HTTP, and over HTTPS
//! with a certificate of the test's CA) while real l7 traffic flows. A
//! pre-rollout hook that says no keeps the canary at 0 %; confirm-step and
//! confirm-promotion hold the step until they say 2xx, or `--approve`
//! answers the promotion by hand; a gate that keeps saying no rolls the
//! rollout back after --max-wait; event hooks hear every step with a
//! Slack-style `text`, and a failing one changes nothing.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use splitter_model::{
    config::Weights,
    rollout::{Rollout, State},
    webhook::Kind,
};
use splitter_testkit::{
    config::Service,
    http::{get, serve_http, Client},
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology, tls::Pki, webhook::HookServer};

const HOOKS: u16 = 9400;
const HOOKS_TLS: u16 = 9401;

fn weights(v1: u32, v2: u32) -> Weights {
    [("v1".to_owned(), v1), ("v2".to_owned(), v2)].into()
}

fn rollout_of(agent: &Agent) -> Option<Rollout> {
    agent.info()?.rollouts.remove("api")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn webhooks_hold_gate_and_hear_a_rollout_and_approve_answers_the_promotion_by_hand() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let hooks = HookServer::start(&topo.lb, HOOKS, None);
    let pki = Pki::named("webhook CA");
    let events = HookServer::start(&topo.lb, HOOKS_TLS, Some(&pki.issue(&["127.0.0.1"], 1)));
    hooks.answer_with("/start", 503);
    hooks.answer_with("/approve", 403);
    let ca = pki.ca_file();
    let analysis = format!(
        "analysis:\n  webhooks:\n\
         \x20   load: {{ kind: pre-rollout, url: \"http://127.0.0.1:{HOOKS}/start\", timeout: 2s, retries: 1 }}\n\
         \x20   gate: {{ kind: confirm-step, url: \"http://127.0.0.1:{HOOKS}/gate\", retries: 0 }}\n\
         \x20   approve: {{ kind: confirm-promotion, url: \"http://127.0.0.1:{HOOKS}/approve\", retries: 0 }}\n\
         \x20   notify: {{ kind: event, url: \"https://127.0.0.1:{HOOKS_TLS}/events\", ca: {ca} }}\n\
         \x20   broken: {{ kind: event, url: \"http://127.0.0.1:{HOOKS}/broken\", retries: 0 }}"
    );
    hooks.answer_with("/broken", 500);
    let config = Topology::config()
        .setting(&analysis)
        .service("api", Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 100)]));
    let agent = Agent::start(&topo.lb, &config.to_string());
    let check = agent.cli().args(["check", "--config"]).arg(&agent.config_path).output().expect("splitter check");
    assert!(text(&check).contains("webhook approve: confirm-promotion"), "{}", text(&check));

    // Hooks the config does not have are refused, naming those it has.
    let (ok, _, err) = agent.control(&["rollout", "api", "--to", "v2", "--webhook", "gate,nosuch"]);
    assert!(
        !ok && err.contains("--webhook \"nosuch\" is not in analysis.webhooks") && err.contains("approve, broken"),
        "{err}"
    );
    let (ok, _, err) = agent.control(&["rollout", "api", "--approve"]);
    assert!(!ok && err.contains("no rollout to steer"), "{err}");

    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let client = Client::new(&topo.client);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                client.send_all(&topo.client, (0..10).map(|_| get(vip(8080), "/", &[])).collect(), 2, false);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = |to: &str, steps: &str, max_wait: &str| {
            let (ok, out, err) = agent.control(&[
                "rollout",
                "api",
                "--to",
                to,
                "--steps",
                steps,
                "--interval",
                "2s",
                "--min-requests",
                "5",
                "--max-wait",
                max_wait,
                "--webhook",
                "load,gate,approve,notify,broken",
                "--detach",
            ]);
            assert!(ok, "{out}{err}\n{}", agent.log());
            out
        };

        // pre-rollout says 503: the canary gets nothing while it does.
        let out = start("v2", "50,100", "60s");
        assert!(out.contains("waits for its pre-rollout webhooks"), "{out}");
        let call = hooks.wait_for("/start", Duration::from_secs(5), |_| true).expect("the pre-rollout hook called");
        assert_eq!(call.content_type, "application/json");
        let b = &call.body;
        assert_eq!(
            (&b["service"], &b["canary"], &b["baseline"], &b["step"], &b["weight"], &b["phase"]),
            (
                &"api".into(),
                &"v2".into(),
                &"v1".into(),
                &serde_json::json!(1),
                &serde_json::json!(50),
                &"pre-rollout".into()
            ),
            "{b}"
        );
        assert!(b["reason"].as_str().is_some_and(|r| !r.is_empty()), "{b}");
        // Asked again while it says no; the weights stay.
        hooks.wait_for("/start", Duration::from_secs(10), |_| hooks.calls("/start").len() >= 4).expect("re-asked");
        let r = rollout_of(&agent).expect("the rollout");
        assert_eq!((r.started(), &r.state), (false, &State::Running), "{r:?}");
        assert!(r.describe().contains("pre-rollout webhook load: HTTP 503: answer 503 for /start"), "{}", r.describe());
        assert_eq!(agent.info().unwrap().weights["api"], weights(100, 0));

        // It says 200: step 1 starts (50 %), passes on traffic, and is held
        // before 100 % by confirm-promotion (403) while confirm-step says 200.
        hooks.answer_with("/start", 200);
        let r = agent.eventually(
            "held before the promotion",
            Duration::from_secs(20),
            || rollout_of(&agent),
            |r| {
                r.as_ref().is_some_and(|r| {
                    r.awaiting.as_ref().is_some_and(|a| a.step == 1) && r.describe().contains("HTTP 403")
                })
            },
        );
        let r = r.unwrap();
        assert_eq!(r.awaiting.as_ref().unwrap().kinds, vec![Kind::ConfirmStep, Kind::ConfirmPromotion]);
        assert_eq!(agent.info().unwrap().weights["api"], weights(5_000, 5_000), "still at step 1");
        let gate = hooks.wait_for("/gate", Duration::from_secs(5), |_| true).expect("confirm-step asked");
        assert_eq!(
            (&gate.body["phase"], &gate.body["step"], &gate.body["weight"]),
            (&"confirm-step".into(), &serde_json::json!(2), &serde_json::json!(100))
        );

        // --approve answers it by hand: the canary gets 100 %, then is promoted.
        let (ok, out, err) = agent.control(&["rollout", "api", "--approve"]);
        assert!(ok && out.contains("promotion approved"), "{out}{err}");
        let r = agent.eventually(
            "promoted",
            Duration::from_secs(15),
            || rollout_of(&agent),
            |r| r.as_ref().is_some_and(|r| r.state == State::Promoted),
        );
        assert!(!r.unwrap().approved);
        assert_eq!(agent.info().unwrap().weights["api"], weights(0, 10_000));
        let (ok, _, err) = agent.control(&["rollout", "api", "--approve"]);
        assert!(!ok && err.contains("nothing waits for approval"), "{err}");

        // The event hook (over HTTPS, verified against the test's CA) heard
        // every phase, each with a text; the failing one changed nothing.
        let phases: Vec<String> = events
            .calls("/events")
            .iter()
            .map(|c| {
                assert!(
                    c.body["text"].as_str().is_some_and(|t| t.starts_with("splitter: api: rollout of v2")),
                    "{}",
                    c.body
                );
                c.body["phase"].as_str().unwrap_or("").to_owned()
            })
            .collect();
        assert_eq!(phases, ["started", "step", "waiting", "approved", "step", "promoted"], "{}", agent.log());
        let steps: Vec<_> =
            events.calls("/events").iter().map(|c| (c.body["step"].clone(), c.body["weight"].clone())).collect();
        assert_eq!(steps[1], (serde_json::json!(1), serde_json::json!(50)), "{steps:?}");
        assert_eq!(steps[5], (serde_json::json!(2), serde_json::json!(100)), "{steps:?}");
        // The gates were asked in order: every pre-rollout call before the later gates'.
        let order: Vec<String> = hooks.all_calls().into_iter().map(|c| c.path).filter(|p| p != "/broken").collect();
        let first_gate = order.iter().position(|p| p != "/start").expect("the later gates asked");
        assert!(order[..first_gate].iter().all(|p| p == "/start"), "{order:?}");
        assert!(order[first_gate..].iter().all(|p| p != "/start"), "{order:?}");
        assert!(!hooks.calls("/broken").is_empty() && agent.log().contains("event webhook failed"), "{}", agent.log());

        // A confirm-step that keeps saying no: rolled back past --max-wait.
        hooks.answer_with("/gate", 500);
        hooks.answer_with("/approve", 200);
        start("v1", "50,100", "3s");
        let r = agent.eventually(
            "rolled back",
            Duration::from_secs(30),
            || rollout_of(&agent),
            |r| r.as_ref().is_some_and(|r| r.state.is_over()),
        );
        let State::RolledBack { reason } = r.unwrap().state else { panic!("not rolled back:\n{}", agent.log()) };
        assert!(reason.contains("confirm-step webhook gate: HTTP 500") && reason.contains("not going on"), "{reason}");
        assert_eq!(agent.info().unwrap().weights["api"], weights(0, 10_000), "the weights from before");
        events
            .wait_for("/events", Duration::from_secs(5), |c| c.body["phase"] == "rolled-back")
            .expect("told of the rollback");
        stop.store(true, Ordering::Relaxed);
    });
    assert!(agent.log().contains("rollout webhook: holds the rollout"), "{}", agent.log());
}
