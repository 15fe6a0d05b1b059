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
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use splitter_testkit::{
    config::{Config, Service},
    http::{serve_http, BACKEND},
    netns::NetNs,
    topology::Topology,
};
use splitter_tests::{agent::Agent, netns::topology};
use splitter_user::l7::tls::{load_pair, CertSet};

const VIP: &str = "203.0.113.10:8443";

/// A test CA and the certificates it issues, written under a temporary
/// directory (removed when dropped).
struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    dir: tempfile::TempDir,
}

/// One issued certificate: its PEM, its key's PEM, and its DER (what a
/// client sees in the handshake).
#[derive(Clone)]
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "splitter test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Pki { ca: Issuer::new(params, key), ca_der: cert.der().clone(), dir: tempfile::tempdir().expect("tempdir") }
    }

    /// A server certificate for `names` with serial number `serial`.
    fn issue(&self, names: &[&str], serial: u64) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.serial_number = Some(serial.into());
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca).expect("issue");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `issued` to NAME.pem and NAME.key (each replaced by a rename,
    /// as rotation tools do); returns the YAML of the pair.
    fn write(&self, name: &str, issued: &Issued) -> String {
        for (file, text) in [(format!("{name}.key"), &issued.key_pem), (format!("{name}.pem"), &issued.cert_pem)] {
            let tmp = self.path(&format!(".{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(&file)).unwrap();
        }
        self.pair(&format!("{name}.pem"), &format!("{name}.key"))
    }

    /// `{ cert: DIR/CERT, key: DIR/KEY }`.
    fn pair(&self, cert: &str, key: &str) -> String {
        format!("{{ cert: {}, key: {} }}", self.path(cert).display(), self.path(key).display())
    }

    /// A client config trusting only this CA, offering `alpn`, sending SNI
    /// or not. It never resumes a session: every handshake is a full one
    /// and shows the certificate served now (a resumed session keeps the
    /// one it started with, on any server).
    fn client(&self, alpn: &[&[u8]], sni: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c.enable_sni = sni;
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }
}

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";

/// A TLS connection to the proxy, with what its handshake showed.
struct Conn {
    /// The server's certificate (DER).
    cert: Vec<u8>,
    alpn: Option<Vec<u8>>,
    sender: Sender,
    name: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    backend: String,
    headers: http::HeaderMap,
}

/// Connects to `addr` and completes a handshake that verifies the server as
/// `name` (5 s at most), then HTTP/1.1 or h2 as ALPN chose.
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<Conn, String> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let server = ServerName::try_from(name.to_owned()).map_err(|e| format!("{name}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let session = tls.get_ref().1;
        let cert = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(H2) {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("http1: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Conn { cert, alpn, sender, name: name.to_owned() })
    };
    tokio::time::timeout(Duration::from_secs(5), work).await.map_err(|_| "no handshake in 5 s".to_owned())?
}

impl Conn {
    /// GET `path` with `headers` (10 s at most).
    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://{}{path}", self.name),
        };
        let mut req = Request::get(uri);
        if let Sender::H1(_) = self.sender {
            req = req.header(http::header::HOST, self.name.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).unwrap();
        let work = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => s.send_request(req).await,
                Sender::H2(s) => s.send_request(req).await,
            }
            .map_err(|e| format!("request: {e}"))?;
            let (parts, body) = resp.into_parts();
            body.collect().await.map_err(|e| format!("body: {e}"))?;
            let backend = parts.headers.get(BACKEND).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            Ok(Answer { status: parts.status, backend, headers: parts.headers })
        };
        tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| "no answer in 10 s".to_owned())?
    }
}

/// Runs `f` to completion on a runtime in `ns` (its sockets are there).
fn block<T: Send>(ns: &NetNs, f: impl std::future::Future<Output = T> + Send) -> T {
    ns.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio").block_on(f))
}

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

/// Writes `config` as the agent's config file (keeping the paths the
/// harness put before it), sends SIGHUP and returns the log line of the
/// outcome (the `nth` reload of this agent).
fn reload(agent: &Agent, config: &Config, nth: usize) -> String {
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    let start = text.find("interfaces:").expect("the agent's config has its interfaces");
    std::fs::write(&agent.config_path, format!("{}{}", &text[..start], config.to_string().trim_start())).unwrap();
    agent.reload().expect("SIGHUP");
    let outcomes = |log: &String| {
        log.lines()
            .filter(|l| l.contains(": reloaded") || l.contains("reload refused"))
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    let log = agent.eventually(
        &format!("the outcome of reload {nth}"),
        Duration::from_secs(10),
        || agent.log(),
        |log| outcomes(log).len() > nth,
    );
    outcomes(&log)[nth].clone()
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
