//! Tier 3, the live dashboard: the real agent serves it on `metrics.listen`
//! and a real headless Chromium (Debian's, over chromedriver) opens it in
//! the agent's namespace. After real traffic (l4 connections, l7 requests
//! mirrored to a shadow that answers differently) and a weight change, the
//! page shows every service and version, its share bars are within 1 pp of
//! what `splitter status --json` says, and a rollout's step changes on the
//! page within 2 s of the agent's. A screenshot is left in
//! `target/test-artifacts/dashboard.png`.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, Client},
    serve::{ask_version, serve_tcp},
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, browser::Browser, netns::topology};
use splitter_user::status::Report;

const METRICS: &str = "127.0.0.1:9190";
const TIMEOUT: Duration = Duration::from_secs(3);

/// shop (l4, blue/green 80/20, health-checked) and api (l7, v1 only, every
/// request mirrored to a shadow that names itself, so every comparison
/// differs).
fn config() -> Config {
    Topology::config()
        .setting(&format!("metrics: {{ listen: \"{METRICS}\" }}"))
        .service(
            "shop",
            Service::tcp(vip(80))
                .blue_green(8080)
                .weights(&[("blue", 80), ("green", 20)])
                .with("health: { interval: 300ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }"),
        )
        .service(
            "api",
            Service::l7(vip(8080))
                .on_blue("v1", 8081)
                .on_green("v2", 8081)
                .on_blue("shadow", 8082)
                .weights(&[("v1", 100), ("v2", 0), ("shadow", 0)])
                .with("mirror: { version: shadow, percent: 100, compare: true }"),
        )
}

/// Every share bar on the page: (service, version, kind) → its width in
/// percent of its track, as laid out (what a reader sees), or `None` when
/// the page says it has no value.
const BARS: &str = r#"
    return [...document.querySelectorAll(".fill")].map((f) => {
        const track = f.parentElement.getBoundingClientRect().width;
        return [f.dataset.service, f.dataset.version, f.dataset.kind,
                f.dataset.share === "" ? null : 100 * f.getBoundingClientRect().width / track];
    });"#;

fn bars(browser: &Browser) -> BTreeMap<(String, String, String), Option<f64>> {
    let Value::Array(rows) = browser.eval(BARS) else { panic!("the bars as an array") };
    rows.iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap_or_default().to_owned();
            ((s(0), s(1), s(2)), r[3].as_f64())
        })
        .collect()
}

/// The shares `status` gives, in percent, keyed as [`bars`] keys them: the
/// file's, the kernel's (l4) or the proxy's weights (l7), and the observed.
fn status_shares(report: &Report) -> BTreeMap<(String, String, String), Option<f64>> {
    let mut out = BTreeMap::new();
    for s in &report.services {
        let runtime_total: u32 = s.versions.iter().filter_map(|v| v.runtime_weight).sum();
        for v in &s.versions {
            let key = |kind: &str| (s.name.clone(), v.name.clone(), kind.to_owned());
            out.insert(key("configured"), Some(f64::from(v.file_bps) / 100.0));
            let live = match v.live_bps {
                Some(bps) => Some(f64::from(bps) / 100.0),
                None => v.runtime_weight.map(|w| 100.0 * f64::from(w) / f64::from(runtime_total.max(1))),
            };
            out.insert(key("live"), live);
            out.insert(key("observed"), v.observed_share.map(|f| f * 100.0));
        }
    }
    out
}

/// The rollout's step index the page shows for `service` (`None`: none shown).
fn page_step(browser: &Browser, service: &str) -> Option<u64> {
    let script = format!(
        "const s = document.querySelector('.steps[data-service=\"{service}\"]'); return s ? Number(s.dataset.step) : null;"
    );
    browser.eval(&script).as_u64()
}

fn agent_step(agent: &Agent, service: &str) -> Option<u64> {
    agent.info()?.rollouts.get(service).map(|r| r.step as u64)
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts").join(name)
}

#[test]
fn the_dashboard_shows_the_split_health_mirror_and_a_moving_rollout_in_a_real_browser() {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).unwrap();
    }
    serve_http(&topo.blue, 8081, "v1").unwrap();
    serve_http(&topo.green, 8081, "v2").unwrap();
    serve_http(&topo.blue, 8082, "shadow").unwrap();
    let agent = Agent::start(&topo.lb, &config().to_string());

    // Traffic: 200 connections to shop, 100 requests to api.
    let shop: SocketAddr = vip(80);
    topo.client.run(|| {
        for i in 0..200 {
            let c = TcpStream::connect_timeout(&shop, TIMEOUT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            ask_version(&c).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        }
    });
    let client = Client::new(&topo.client);
    for (i, a) in
        client.send_all(&topo.client, (0..100).map(|_| get(vip(8080), "/", &[])).collect(), 4, false).iter().enumerate()
    {
        a.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    // Moving a weight: shop's live split leaves the file's.
    assert!(agent.control(&["weight", "shop", "green=60"]).0);

    topo.lb.run(|| {
        let browser = Browser::start();
        browser.goto(&format!("http://{METRICS}/"));

        // The services and versions appear.
        let listed = || {
            let script = "return [...document.querySelectorAll('section.service')].map((s) => \
                          [s.dataset.service, [...s.querySelectorAll('.version')].map((v) => v.dataset.version)]);";
            browser.eval(script)
        };
        let want = serde_json::json!([["api", ["shadow", "v1", "v2"]], ["shop", ["blue", "green"]]]);
        let shown = agent.eventually("the page lists the services", Duration::from_secs(10), listed, |v| v == &want);
        assert_eq!(shown, want);

        // The bars against status: a poll of each, until they agree (the
        // page lags by up to a second; health and copies settle).
        let compare = || {
            let page = bars(&browser);
            let status = status_shares(&agent.status());
            let off: Vec<String> = status
                .iter()
                .filter_map(|(k, want)| {
                    let got = page.get(k).copied().flatten();
                    let close = match (got, want) {
                        (Some(g), Some(w)) => (g - w).abs() <= 1.0,
                        (None, None) => true,
                        // No value in status: the page draws an empty bar.
                        (Some(g), None) => g == 0.0,
                        (None, Some(_)) => false,
                    };
                    (!close).then(|| format!("{k:?}: page {got:?}, status {want:?}"))
                })
                .collect();
            (off, page.len(), status.len())
        };
        let (off, on_page, in_status) =
            agent.eventually("the bars within 1 pp of status", Duration::from_secs(10), compare, |(off, ..)| {
                off.is_empty()
            });
        assert_eq!(on_page, in_status, "one bar per version and kind");
        assert!(off.is_empty());
        // What the comparison saw is not trivial: the live split moved off the
        // file's, and the observed split counted the traffic.
        let page = bars(&browser);
        let at = |s: &str, v: &str, k: &str| page[&(s.to_owned(), v.to_owned(), k.to_owned())];
        assert!((at("shop", "green", "configured").unwrap() - 20.0).abs() <= 1.0);
        let green_live = 100.0 * 60.0 / 140.0;
        assert!((at("shop", "green", "live").unwrap() - green_live).abs() <= 1.0, "green=60, blue=80: {page:?}");
        assert!(at("shop", "blue", "observed").unwrap() > 50.0, "{page:?}");
        assert!((at("api", "v1", "observed").unwrap() - 100.0).abs() <= 1.0, "{page:?}");

        // Health and the mirror's differences are on the page.
        let text = || browser.eval("return document.body.textContent;").as_str().unwrap_or_default().to_owned();
        let body = agent.eventually("health and diffs on the page", Duration::from_secs(10), text, |t| {
            t.contains("Endpoints (2 of 2 up)") && t.contains("100 differed") && t.contains("\"v1\" vs \"shadow\"")
        });
        assert!(body.contains("198.51.100.10:8080"), "{body}");

        // A rollout, under l4 traffic (a step needs canary flows): its step
        // changes on the page within 2 s of the agent's.
        let stop = AtomicBool::new(false);
        let (seen_at, shown_at) = std::thread::scope(|scope| {
            scope.spawn(|| {
                topo.client.run(|| {
                    let start = Instant::now();
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                        if let Ok(c) = TcpStream::connect_timeout(&shop, TIMEOUT) {
                            let _ = c.set_read_timeout(Some(TIMEOUT));
                            let _ = ask_version(&c);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            });
            let args = ["rollout", "shop", "--to", "green", "--steps", "10,40,100", "--interval", "2s"];
            let (ok, out, err) = agent.control(&[&args[..], &["--min-requests", "5", "--detach"]].concat());
            assert!(ok, "{out}{err}");
            let start = Instant::now();
            let mut seen_at: BTreeMap<u64, Instant> = BTreeMap::new();
            let mut shown_at: BTreeMap<u64, Instant> = BTreeMap::new();
            while start.elapsed() < Duration::from_secs(40) && !(shown_at.contains_key(&1) && shown_at.contains_key(&2))
            {
                if let Some(s) = agent_step(&agent, "shop") {
                    seen_at.entry(s).or_insert_with(Instant::now);
                }
                if let Some(s) = page_step(&browser, "shop") {
                    shown_at.entry(s).or_insert_with(Instant::now);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.store(true, Ordering::Relaxed);
            (seen_at, shown_at)
        });
        for step in [1, 2] {
            let (Some(seen), Some(shown)) = (seen_at.get(&step), shown_at.get(&step)) else {
                panic!("step {step}: agent at {seen_at:?}, page at {shown_at:?}\n{}", agent.log());
            };
            let lag = shown.saturating_duration_since(*seen);
            assert!(lag <= Duration::from_secs(2), "step {step} showed {lag:?} after the agent took it");
        }
        browser.screenshot(&artifact("dashboard.png"));
    });
}
