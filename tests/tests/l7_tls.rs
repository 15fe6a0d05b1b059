//! Tier 3, TLS termination on the L7 path: the real agent terminates TLS for
//! an l7 service on the VIP with certificates a test CA (rcgen) issued into a
//! temporary directory; a rustls client that trusts only that CA connects
//! from the client namespace, over HTTP/1.1 and h2 (ALPN), to real hyper
//! backends in the blue (v1) and green (v2) namespaces. Certificate files are
//! rotated, broken and refused while the agent runs.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use http::StatusCode;
use splitter_testkit::{
    config::{Config, Service},
    http::serve_http,
    topology::Topology,
};
use splitter_tests::{
    agent::Agent,
    netns::topology,
    tls::{block, connect, Pki, H1, H2},
};
use splitter_user::l7::tls::{load_pair, CertSet};

const VIP: &str = "203.0.113.10:8443";

/// The certificate a new handshake with `name` (SNI on or off) gets.
fn served_cert(topo: &Topology, pki: &Pki, name: &str, sni: bool) -> Result<Vec<u8>, String> {
    let config = pki.client(&[H1], sni);
    block(&topo.client, async move { connect(VIP.parse().unwrap(), config, name).await.map(|c| c.cert) })
}

/// api (l7, TLS with the pairs `certificates`) on the VIP: v1 on blue and
/// v2 on green (:8081), `weights`, `x-canary: true` to v2.
fn config(certificates: &[String], weights: &[(&str, u32)]) -> Config {
    let api = Service::l7(VIP)
        .on_blue("v1", 8081)
        .on_green("v2", 8081)
        .weights(weights)
        .route(r#"{ headers: { x-canary: "true" } }"#, "v2")
        .with(&format!("tls:\n  certificates: [{}]", certificates.join(", ")));
    Topology::config().service("api", api)
}

fn setup(config: &Config) -> (Topology, Agent) {
    let topo = topology();
    serve_http(&topo.blue, 8081, "v1").expect("v1 backend");
    serve_http(&topo.green, 8081, "v2").expect("v2 backend");
    let agent = Agent::start(&topo.lb, &config.to_string());
    (topo, agent)
}

/// [`Agent::reload_with`] `config`, checking that it is the agent's `nth` reload.
fn reload(agent: &Agent, config: &Config, nth: usize) -> String {
    let before = agent.log().lines().filter(|l| l.contains(": reloaded") || l.contains("reload refused")).count();
    assert_eq!(before, nth, "reloads before this one");
    agent.reload_with(&config.to_string())
}

/// `(reloads ok, reloads refused, handshake failures)` of api in `status`.
fn tls_counts(agent: &Agent) -> (u64, u64, u64) {
    let info = agent.info().expect("the agent answers status");
    let api = &info.l7["api"];
    let tls = api.tls.as_ref().expect("api terminates TLS");
    (tls.reloads_ok, tls.reloads_refused, api.connections.tls_handshake_failures)
}

#[test]
fn https_requests_split_by_weight_and_header_over_http1_and_h2_and_the_endpoint_is_told_https() {
    let pki = Pki::new();
    let pair = pki.write("api", &pki.issue(&["api.test"], 1));
    let (topo, agent) = setup(&config(&[pair], &[("v1", 80), ("v2", 20)]));
    let vip: SocketAddr = VIP.parse().unwrap();
    for (alpn, want) in [(vec![H2, H1], H2), (vec![H1], H1), (vec![], H1)] {
        let config = pki.client(&alpn, true);
        let (canary, plain, negotiated) = block(&topo.client, async move {
            // Four connections: the canary's requests, then 150 plain ones on each.
            let mut canary = Vec::new();
            let mut plain = Vec::new();
            let mut negotiated = None;
            for _ in 0..4 {
                let mut conn = connect(vip, config.clone(), "api.test").await.expect("handshake");
                negotiated = Some(conn.alpn.clone());
                for _ in 0..5 {
                    canary.push(conn.get("/", &[("x-canary", "true")]).await.expect("canary request"));
                }
                for _ in 0..150 {
                    plain.push(conn.get("/", &[]).await.expect("request"));
                }
            }
            (canary, plain, negotiated.flatten())
        });
        let label = String::from_utf8_lossy(want);
        let offered: Vec<_> = alpn.iter().map(|a| String::from_utf8_lossy(a)).collect();
        assert_eq!(negotiated.as_deref(), (!alpn.is_empty()).then_some(want), "ALPN offered {offered:?}");
        assert!(canary.iter().all(|a| a.status == StatusCode::OK && a.backend == "v2"), "{label}: {canary:?}");
        let mut split = BTreeMap::<String, usize>::new();
        for a in &plain {
            assert_eq!(a.status, StatusCode::OK, "{label}: {a:?}");
            *split.entry(a.backend.clone()).or_default() += 1;
        }
        // 600 requests: v2's share has a standard deviation of 1.6 pp.
        let v2 = split.get("v2").copied().unwrap_or(0) as f64 / plain.len() as f64;
        assert!((v2 - 0.20).abs() <= 0.06, "{label}: v2 share {v2} ({split:?})");
        let seen = |h: &str| plain[0].headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(seen("x-seen-proto"), "https", "{label}: {:?}", plain[0]);
        assert!(seen("x-seen-forwarded").contains(";proto=https;"), "{label}: {:?}", plain[0]);
    }
    // Plain HTTP to the TLS listener gets no HTTP answer and counts as a
    // failed handshake.
    let before = tls_counts(&agent).2;
    let answer = topo.client.run(|| {
        let mut s = std::net::TcpStream::connect(vip).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: api.test\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was served on the TLS listener: {answer:?}");
    agent.eventually("the failed handshake counted", Duration::from_secs(5), || tls_counts(&agent).2, |n| *n > before);
    let status = agent.status();
    let api = status.service("api").unwrap();
    let requests = |v: &str| api.version(v).unwrap().requests.as_ref().unwrap().requests;
    assert_eq!(requests("v1") + requests("v2"), 3 * 4 * 155, "status counts every request: {api:?}");
}

#[test]
fn sni_picks_the_certificate_and_a_handshake_without_sni_gets_the_first() {
    let pki = Pki::new();
    let api = pki.issue(&["api.test", "*.api.test"], 10);
    let www = pki.issue(&["www.test"], 20);
    let pairs = [pki.write("api", &api), pki.write("www", &www)];
    let (topo, agent) = setup(&config(&pairs, &[("v1", 1)]));
    for (name, sni, want, label) in [
        ("api.test", true, &api, "api"),
        ("www.test", true, &www, "www"),
        ("v2.api.test", true, &api, "api (wildcard)"),
        ("WWW.test", true, &www, "www (any case)"),
        ("api.test", false, &api, "api (no SNI: the first)"),
    ] {
        let got = served_cert(&topo, &pki, name, sni).unwrap_or_else(|e| panic!("{name} (sni {sni}): {e}"));
        assert!(got == want.der, "{name} (sni {sni}) did not get {label}'s certificate");
    }
    // Without SNI, www.test's own certificate is not chosen: the first is.
    let err = served_cert(&topo, &pki, "www.test", false).expect_err("www.test verified without SNI");
    assert!(err.contains("not valid for name \"www.test\"") && err.contains("api.test"), "{err}");
    // A name no certificate covers gets the first, which the client refuses.
    let err = served_cert(&topo, &pki, "other.test", true).expect_err("other.test verified");
    assert!(err.contains("handshake") && err.contains("not valid for name"), "{err}");
    // Both serve requests, over h2 too.
    let config = pki.client(&[H2, H1], true);
    let answers = block(&topo.client, async move {
        let mut out = Vec::new();
        for name in ["api.test", "www.test"] {
            let mut conn = connect(VIP.parse().unwrap(), config.clone(), name).await.expect("handshake");
            out.push((name, conn.alpn.clone(), conn.get("/", &[]).await));
        }
        out
    });
    for (name, alpn, answer) in answers {
        assert_eq!(alpn.as_deref(), Some(H2), "{name}");
        let a = answer.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((a.status, a.backend.as_str()), (StatusCode::OK, "v1"), "{name}");
    }
    let names = agent.info().unwrap().l7["api"].tls.clone().unwrap().certificates;
    assert_eq!(names, [vec!["api.test", "*.api.test"], vec!["www.test"]], "status names each pair's certificate");
}

/// `splitter check` of `config`: whether it passed, and all it printed.
fn check(agent: &Agent, config: &Config, file: &Path) -> (bool, String) {
    std::fs::write(file, config.to_string()).unwrap();
    let out = agent.cli().arg("check").arg("--config").arg(file).output().expect("splitter check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_bad_pair_is_refused_by_check_and_by_a_reload_and_the_running_certificate_stays() {
    let pki = Pki::new();
    let good = pki.issue(&["api.test"], 1);
    let other = pki.issue(&["api.test"], 2);
    let pair = pki.write("api", &good);
    pki.write("other", &other);
    std::fs::write(pki.path("text.pem"), "not a certificate\n").unwrap();
    let (topo, mut agent) = setup(&config(std::slice::from_ref(&pair), &[("v1", 1)]));
    let serves_good = |agent: &Agent, after: &str| {
        let got = served_cert(&topo, &pki, "api.test", true).unwrap_or_else(|e| panic!("after {after}: {e}"));
        assert!(got == good.der, "after {after}, the running certificate was not served\nlog:\n{}", agent.log());
    };
    serves_good(&agent, "the start");
    let path = |f: &str| pki.path(f).display().to_string();
    let bad = [
        (pki.pair("api.pem", "other.key"), vec![path("other.key"), "does not match".into(), path("api.pem")]),
        (pki.pair("missing.pem", "api.key"), vec![path("missing.pem"), "cannot read".into()]),
        (pki.pair("text.pem", "api.key"), vec!["no CERTIFICATE in".into(), path("text.pem")]),
        (pki.pair("api.pem", "api.pem"), vec!["no private key in".into(), path("api.pem")]),
    ];
    let file = pki.path("check.yaml");
    assert!(check(&agent, &config(std::slice::from_ref(&pair), &[("v1", 1)]), &file).0, "the good pair checks");
    for (nth, (pair, says)) in bad.iter().enumerate() {
        let bad_config = config(std::slice::from_ref(pair), &[("v1", 1)]);
        let (ok, out) = check(&agent, &bad_config, &file);
        assert!(!ok, "check passed {pair}:\n{out}");
        for s in says.iter().chain([&"services.api.tls.certificates[0]".to_owned()]) {
            assert!(out.contains(s.as_str()), "check of {pair} does not say {s:?}:\n{out}");
        }
        let outcome = reload(&agent, &bad_config, nth);
        assert!(outcome.contains("reload refused"), "{outcome}");
        for s in says {
            assert!(outcome.contains(s.as_str()), "the refused reload of {pair} does not say {s:?}: {outcome}");
        }
        serves_good(&agent, &format!("the refused reload of {pair}"));
    }
    // The running files broken in place: the watch refuses them too.
    std::fs::copy(pki.path("other.key"), pki.path("api.key")).unwrap();
    agent.eventually("the mismatched files refused", Duration::from_secs(10), || tls_counts(&agent).1, |n| *n >= 1);
    serves_good(&agent, "the key file was replaced by another certificate's");
    let log = agent.log();
    assert!(
        log.contains(&format!("{} does not match {}", path("api.key"), path("api.pem"))),
        "the warning names the files:\n{log}"
    );
    // Mended: the watch loads the pair again.
    let mended = pki.issue(&["api.test"], 3);
    pki.write("api", &mended);
    agent.eventually("the mended files loaded", Duration::from_secs(10), || tls_counts(&agent).0, |n| *n >= 1);
    let got = served_cert(&topo, &pki, "api.test", true).unwrap();
    assert!(got == mended.der, "the mended pair is served");
    assert!(agent.stop_ok(), "the agent stops cleanly");
}

#[test]
fn rotating_the_files_under_load_fails_no_handshake_and_new_handshakes_get_the_new_certificate() {
    let pki = Pki::new();
    let old = pki.issue(&["api.test"], 100);
    let new = pki.issue(&["api.test"], 200);
    let pair = pki.write("api", &old);
    let (topo, agent) = setup(&config(&[pair], &[("v1", 50), ("v2", 50)]));
    // ~100 new connections a second for 4 s, one request each; the files
    // are rotated 1.5 s in.
    const RATE: u64 = 100;
    const SECONDS: u64 = 4;
    let config = pki.client(&[H2, H1], true);
    let started = Instant::now();
    let results = std::thread::scope(|s| {
        let load = s.spawn(|| {
            block(&topo.client, async move {
                let mut tasks = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
                for _ in 0..RATE * SECONDS {
                    tick.tick().await;
                    let config = config.clone();
                    tasks.push(tokio::spawn(async move {
                        let at = started.elapsed();
                        let mut conn = connect(VIP.parse().unwrap(), config, "api.test").await?;
                        let answer = conn.get("/", &[]).await?;
                        if answer.status != StatusCode::OK {
                            return Err(format!("status {}", answer.status));
                        }
                        Ok::<_, String>((at, conn.cert))
                    }));
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.expect("task"));
                }
                out
            })
        });
        std::thread::sleep(Duration::from_millis(1500));
        pki.write("api", &new);
        let rotated = started.elapsed();
        (load.join().expect("load"), rotated)
    });
    let (results, rotated) = results;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
    let ok: Vec<&(Duration, Vec<u8>)> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(ok.iter().all(|(_, c)| *c == old.der || *c == new.der), "a handshake got neither certificate");
    let before = ok.iter().filter(|(at, c)| *at < rotated && *c == new.der).count();
    assert_eq!(before, 0, "a handshake before the rotation got the new certificate");
    // The reload settles 250 ms after the files; a second is plenty.
    let timeline = || {
        let mut by: BTreeMap<u128, (usize, usize)> = BTreeMap::new();
        for (at, c) in &ok {
            let e = by.entry(at.as_millis() / 250 * 250).or_default();
            if *c == old.der {
                e.0 += 1
            } else {
                e.1 += 1
            }
        }
        format!("rotated at {rotated:?}; (old, new) by 250 ms from the start: {by:?}\nagent log:\n{}", agent.log())
    };
    let late: Vec<_> = ok.iter().filter(|(at, _)| *at > rotated + Duration::from_secs(1)).collect();
    assert!(late.len() > 100, "too few handshakes late in the run: {}", late.len());
    assert!(
        late.iter().all(|(_, c)| *c == new.der),
        "a handshake a second after the rotation got the old certificate: {}",
        timeline()
    );
    assert_eq!(tls_counts(&agent), (1, 0, 0), "one reload, nothing refused, no handshake failed");
    let got = served_cert(&topo, &pki, "api.test", true).unwrap();
    assert!(got == new.der, "a new handshake after the load gets the new certificate");
}

/// Not root: pairs loaded as the agent loads them, checked with real
/// certificates — the names each covers, which one a server name picks, and
/// a key that is not the certificate's.
#[test]
fn pairs_load_with_their_names_and_a_mismatched_key_is_named() {
    let pki = Pki::new();
    let api = pki.issue(&["api.test", "*.API.test"], 1);
    let www = pki.issue(&["www.test"], 2);
    pki.write("api", &api);
    pki.write("www", &www);
    let pair =
        |cert: &str, key: &str| splitter_model::config::l7::CertPair { cert: pki.path(cert), key: pki.path(key) };
    let loaded = load_pair(&pair("api.pem", "api.key")).expect("api pair");
    assert_eq!(loaded.names, ["api.test", "*.api.test"]);
    assert_eq!(loaded.key.cert[0].as_ref(), api.der.as_slice());
    let tls = splitter_model::config::l7::Tls {
        certificates: vec![pair("api.pem", "api.key"), pair("www.pem", "www.key")],
        min_version: Default::default(),
    };
    let set = CertSet::load(&tls).expect("both pairs");
    for (sni, want) in [(Some("www.test"), &www), (Some("x.api.test"), &api), (None, &api), (Some("nope.test"), &api)] {
        assert!(set.choose(sni).cert[0].as_ref() == want.der.as_slice(), "{sni:?}");
    }
    let err = load_pair(&pair("api.pem", "www.key")).err().expect("a mismatched pair loaded").to_string();
    let want = format!("{} does not match {}", pki.path("www.key").display(), pki.path("api.pem").display());
    assert!(err.contains(&want), "{err}");
    let err = load_pair(&pair("api.pem", "api.pem")).err().expect("a certificate loaded as a key").to_string();
    assert!(err.contains(&format!("no private key in {}", pki.path("api.pem").display())), "{err}");
}
