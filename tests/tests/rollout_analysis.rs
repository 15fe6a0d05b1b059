//! Tier 3, release analysis from outside (`analysis:`): a real Prometheus
//! (Debian's) scrapes a KPI exporter the test runs, which says each
//! version's checkout conversion; the real agent asks Prometheus at the end
//! of every rollout step while real l7 traffic flows. A canary whose KPI
//! breaches is rolled back with the metric's name and value in the reason;
//! a healthy one is promoted; with Prometheus gone mid-rollout the step is
//! inconclusive, held, then rolled back, never promoted blind.

use std::{
    process::Output,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use splitter_model::rollout::{Rollout, State};
use splitter_testkit::{
    config::Service,
    http::{get, serve_http, serve_http_failing, Client},
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::{splitter_bin, Agent},
    netns::topology,
    prometheus::{KpiExporter, Prometheus},
    tls::Pki,
};

const PROMETHEUS: &str = "127.0.0.1:9090";
const EXPORTER: &str = "127.0.0.1:9300";
const KPI: &str = "checkout_conversion";

struct Setup {
    topo: Topology,
    agent: Agent,
    prometheus: Prometheus,
    kpi: KpiExporter,
}

/// api (l7: v1 on blue, v2 on green, all on v1); the exporter saying v1
/// converts 5 % and v2 `canary_kpi`; Prometheus scraping it, and the agent
/// with `analysis.metrics.conversion` (min 2 %, at most 50 % below v1).
fn setup(canary_kpi: f64) -> Setup {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let kpi = KpiExporter::start(&topo.lb, EXPORTER.parse().unwrap(), KPI);
    kpi.set("v1", 0.05);
    kpi.set("v2", canary_kpi);
    let prometheus = Prometheus::start(&topo.lb, PROMETHEUS.parse().unwrap(), &[kpi.addr]);
    // Scraped before any rollout starts.
    let start = Instant::now();
    while prometheus.value(&topo.lb, &format!("{KPI}{{version=\"v2\"}}")).is_none() {
        assert!(start.elapsed() < Duration::from_secs(15), "no scrape in 15 s: {}", prometheus.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let config = config(Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 100)]));
    let agent = Agent::start(&topo.lb, &config);
    Setup { topo, agent, prometheus, kpi }
}

/// The agent's config: `api` and `analysis.metrics.conversion`.
fn config(api: Service) -> String {
    let analysis = format!(
        "analysis:\n  prometheus: {{ url: \"http://{PROMETHEUS}\", timeout: 2s }}\n  metrics:\n    conversion:\n      query: '{KPI}{{version=\"{{{{canary}}}}\"}}'\n      min: 0.02\n      baseline: {{ max_drop: 50% }}"
    );
    Topology::config().setting(&analysis).service("api", api).to_string()
}

/// Runs `splitter rollout api --to v2 ... ARGS` (following it) while l7
/// traffic flows, and `during` meanwhile; the command's output.
fn rollout(s: &Setup, args: &[&str], during: impl FnOnce() + Send) -> Output {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let client = Client::new(&s.topo.client);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
                client.send_all(&s.topo.client, (0..10).map(|_| get(vip(8080), "/", &[])).collect(), 2, false);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        scope.spawn(during);
        let out = s
            .agent
            .cli()
            .args(["rollout", "api", "--to", "v2", "--min-requests", "5", "--analysis", "conversion"])
            .args(args)
            .arg("--socket")
            .arg(&s.agent.control_socket)
            .output()
            .expect("splitter rollout");
        stop.store(true, Ordering::Relaxed);
        out
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn last_rollout(agent: &Agent) -> Rollout {
    agent.info().expect("the agent answers").rollouts.remove("api").expect("a rollout of api")
}

#[test]
fn a_canary_whose_kpi_holds_is_promoted_and_one_whose_kpi_breaches_is_rolled_back() {
    // v2 converts 4 %: above the 2 % floor and within 50 % of v1's 5 %.
    let s = setup(0.04);
    let out = rollout(&s, &["--steps", "50,100", "--interval", "2s"], || ());
    assert!(out.status.success(), "{}\n{}", text(&out), s.agent.log());
    assert!(text(&out).contains("promoted to v2"), "{}", text(&out));
    let r = last_rollout(&s.agent);
    assert_eq!(r.state, State::Promoted);
    let reading = r.readings.iter().find(|g| g.gate.starts_with("analysis conversion")).expect("the KPI's reading");
    assert_eq!((reading.value, reading.baseline, reading.ok), (Some(0.04), Some(0.05), true), "{reading:?}");
    assert!(s.agent.log().contains("rollout analysis: ok"), "{}", s.agent.log());

    // Now v2 converts 1 %: rolled back in its first step, the KPI named.
    s.kpi.set("v2", 0.01);
    s.agent.control(&["weight", "api", "v1=100", "v2=0"]);
    let start = Instant::now();
    while s.prometheus.value(&s.topo.lb, &format!("{KPI}{{version=\"v2\"}}")) != Some(0.01) {
        assert!(start.elapsed() < Duration::from_secs(10), "the new KPI not scraped");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = rollout(&s, &["--steps", "50,100", "--interval", "2s"], || ());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("step 1 (50%): analysis conversion is 0.0100 (below its min 0.02"),
        "{}\n{}",
        text(&out),
        s.agent.log()
    );
    assert_eq!(
        s.agent.info().unwrap().weights["api"],
        [("v1".to_owned(), 100), ("v2".to_owned(), 0)].into(),
        "the weights from before"
    );
    assert!(s.agent.log().contains("rollout analysis: BREACHED"), "{}", s.agent.log());
}

#[test]
fn with_prometheus_gone_mid_rollout_the_step_is_inconclusive_then_rolled_back() {
    let s = setup(0.04);
    // Prometheus is stopped as soon as the first step has passed on its answer.
    let reached_step_2 = AtomicBool::new(false);
    let out = rollout(&s, &["--steps", "50,100", "--interval", "3s", "--max-wait", "4s"], || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if s.agent.info().and_then(|mut i| i.rollouts.remove("api")).is_some_and(|r| r.step == 1) {
                s.prometheus.stop();
                reached_step_2.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(reached_step_2.load(Ordering::Relaxed), "the first step passed: {}\n{}", text(&out), s.agent.log());
    assert!(!out.status.success(), "never promoted blind: {}", text(&out));
    let out = text(&out);
    assert!(
        out.contains("step 2 (100%): analysis conversion inconclusive") && out.contains("not promoting blind"),
        "{out}\n{}",
        s.agent.log()
    );
    let r = last_rollout(&s.agent);
    assert!(matches!(r.state, State::RolledBack { .. }) && r.step == 1, "{r:?}");
    assert_eq!(s.agent.info().unwrap().weights["api"], [("v1".to_owned(), 100), ("v2".to_owned(), 0)].into());
    assert!(s.agent.log().contains("rollout analysis: inconclusive"), "{}", s.agent.log());
}

#[test]
fn the_report_sets_each_version_against_the_baseline_with_a_z_test_and_each_kpi() {
    let s = setup(0.04);
    serve_http_failing(&s.topo.green, 8083, "bad").unwrap();
    let api = Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).on_green("bad", 8083).weights(&[
        ("v1", 50),
        ("v2", 30),
        ("bad", 20),
    ]);
    assert!(s.agent.reload_with(&config(api)).contains("reloaded"), "{}", s.agent.log());
    let client = Client::new(&s.topo.client);
    let answers = client.send_all(&s.topo.client, (0..400).map(|_| get(vip(8080), "/", &[])).collect(), 8, false);
    let sent = answers.iter().filter(|a| a.is_ok()).count() as u64;
    let report = |args: &[&str]| {
        // On the agent's host (its namespace), where Prometheus is.
        let out = s
            .topo
            .lb
            .command(splitter_bin())
            .args(["report", "api", "--since", "10m"])
            .args(args)
            .arg("--socket")
            .arg(&s.agent.control_socket)
            .output()
            .expect("splitter report");
        assert!(out.status.success(), "{}\n{}", text(&out), s.agent.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let r: splitter_model::report::Report = serde_json::from_str(&report(&["--json"])).expect("the report's JSON");
    assert_eq!(r.baseline, "v1", "the busiest version");
    let requests: u64 = r.versions.values().map(|v| v.requests.unwrap_or(0)).sum();
    assert_eq!(requests, sent, "every request answered is counted once: {r:?}");
    let bad = &r.versions["bad"];
    assert!(bad.requests.unwrap() > 20 && bad.errors == bad.requests.unwrap(), "{bad:?}");
    let t = r.error_rates.iter().find(|t| t.version == "bad").expect("bad against v1");
    assert_eq!((t.events, t.trials, t.baseline_events), (bad.errors, bad.requests.unwrap(), 0));
    assert_eq!(t.baseline_trials, r.versions["v1"].requests.unwrap());
    assert_eq!(t.significant, Some(true), "{t:?}");
    assert!(t.p_value.unwrap() < 1e-6, "{t:?}");
    let t = r.error_rates.iter().find(|t| t.version == "v2").expect("v2 against v1");
    assert_eq!((t.significant, t.why.as_str()), (None, "no errors on either side"), "{t:?}");
    // The KPI per version, from Prometheus.
    let kpi = &r.metrics["conversion"].values;
    assert_eq!((kpi["v1"].value, kpi["v2"].value), (Some(0.05), Some(0.04)));
    assert!((kpi["v2"].change.unwrap() + 0.2).abs() < 1e-9, "{kpi:?}");
    assert!(kpi["bad"].value.is_none() && kpi["bad"].why.contains("no series"), "{kpi:?}");
    let shown = report(&[]);
    println!("{shown}");
    assert!(
        shown.contains("error rate, bad against v1: 100.00% vs 0.00%") && shown.contains("SIGNIFICANT at 5%"),
        "{shown}"
    );
    assert!(shown.contains("metric conversion (min 0.02, at most 50% below the baseline): bad none"), "{shown}");
    // A baseline the service does not have is refused.
    let out = s
        .agent
        .cli()
        .args(["report", "api", "--baseline", "red", "--socket"])
        .arg(&s.agent.control_socket)
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).contains("no version \"red\""), "{}", text(&out));
}

#[test]
fn prometheus_over_https_is_verified_against_the_configured_ca() {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    topo.lb.ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"]).expect("VIP on lo");
    let kpi = KpiExporter::start(&topo.lb, EXPORTER.parse().unwrap(), KPI);
    kpi.set("v1", 0.05);
    kpi.set("v2", 0.04);
    let pki = Pki::named("prometheus CA");
    pki.write("prom", &pki.issue(&["127.0.0.1"], 1));
    let (cert, key) = (pki.path("prom.pem"), pki.path("prom.key"));
    let prometheus = Prometheus::start_with(&topo.lb, PROMETHEUS.parse().unwrap(), &[kpi.addr], Some((&cert, &key)));
    let other = Pki::named("not Prometheus's CA");
    let with_ca = |ca: &str| {
        let analysis = format!(
            "analysis:\n  prometheus: {{ url: \"https://{PROMETHEUS}\", timeout: 2s, ca: {ca} }}\n  metrics:\n    conversion:\n      query: '{KPI}{{version=\"{{{{canary}}}}\"}}'\n      min: 0.02"
        );
        let api = Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 100)]);
        Topology::config().setting(&analysis).service("api", api).to_string()
    };
    let agent = Agent::start(&topo.lb, &with_ca(&pki.ca_file()));
    let report = |config: Option<&std::path::Path>| {
        let mut cmd = topo.lb.command(splitter_bin());
        cmd.args(["report", "api", "--since", "1m", "--json", "--socket"]).arg(&agent.control_socket);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().expect("splitter report");
        assert!(out.status.success(), "{}", text(&out));
        let r: splitter_model::report::Report = serde_json::from_slice(&out.stdout).expect("JSON");
        r.metrics["conversion"].values["v2"].clone()
    };
    // Trusted: the KPI arrives over TLS once scraped.
    let start = Instant::now();
    loop {
        let v2 = report(None);
        if v2.value == Some(0.04) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no KPI over https: {v2:?}\n{}", prometheus.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    // The agent judges a rollout on it over TLS too (with traffic to judge).
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            let client = Client::new(&topo.client);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(30) {
                client.send_all(&topo.client, (0..10).map(|_| get(vip(8080), "/", &[])).collect(), 2, false);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = agent
            .cli()
            .args(["rollout", "api", "--to", "v2", "--steps", "100", "--interval", "1s", "--min-requests", "5"])
            .args(["--max-wait", "20s", "--analysis", "conversion", "--socket"])
            .arg(&agent.control_socket)
            .output()
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        out
    });
    assert!(out.status.success() && text(&out).contains("promoted"), "{}\n{}", text(&out), agent.log());
    // Another CA: no value, and the reason names the certificate.
    let untrusting = agent.config_path.with_file_name("untrusting.yaml");
    let mine = std::fs::read_to_string(&agent.config_path).unwrap();
    std::fs::write(&untrusting, mine.replace(&pki.ca_file(), &other.ca_file())).unwrap();
    let v2 = report(Some(&untrusting));
    assert!(v2.value.is_none() && v2.why.to_lowercase().contains("certificate"), "{v2:?}");
}
