//! Tier 3, TLS from the l7 proxy to the endpoints (`upstream.tls`): the real
//! agent in front of endpoints that serve only TLS, with certificates a test
//! CA (rcgen) issued into a temporary directory — tonic gRPC servers
//! (`protocol: h2`, verified as `server_name`) and hyper HTTPS servers
//! (`protocol: http1`, verified as the endpoint's IP address). Clients
//! speak clear text to the proxy. A CA that did not sign the endpoints' or
//! a wrong name is a 502 (UNAVAILABLE for gRPC), and a bad CA file is
//! refused by `check` and by a reload.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use splitter_testkit::{
    config::Service,
    http::{get, Client, BACKEND},
    netns::NetNs,
    serve::spawn_tokio_server,
    topology::{vip, Topology, BLUE, GREEN},
};
use splitter_tests::{
    agent::Agent,
    grpc::{serve_grpc_tls, GrpcClient},
    netns::topology,
    tls::{Issued, Pki},
};
use splitter_user::l7::ServiceStats;

/// Serves HTTPS (HTTP/1.1 only, ALPN http/1.1) as backend `name` on
/// `[::]:port` in `ns` with `issued`, until the process ends. Answers carry
/// `x-backend: name` and `x-seen-host` (the Host it got) and
/// `x-seen-proto` (the request's `x-forwarded-proto`).
fn serve_https(ns: &NetNs, port: u16, name: &'static str, issued: &Issued) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("chain");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    spawn_tokio_server(ns, port, move |listener| async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let seen = |h: &str| req.headers().get(h).cloned().unwrap_or(http::HeaderValue::from_static(""));
                    let resp = Response::builder()
                        .header(BACKEND, name)
                        .header("x-seen-host", seen("host"))
                        .header("x-seen-proto", seen("x-forwarded-proto"))
                        .body(Full::new(Bytes::from(name)))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    })
    .expect("bind the backend");
}

/// api (l7) on the VIP's :8080: v1 on blue and v2 on green (`port`),
/// `x-canary: true` to v2, with `upstream`.
fn api(port: u16, upstream: &str) -> Service {
    Service::l7(vip(8080))
        .on_blue("v1", port)
        .on_green("v2", port)
        .weights(&[("v1", 1)])
        .route(r#"{ headers: { x-canary: "true" } }"#, "v2")
        .with(&format!("upstream: {upstream}"))
}

fn config(api: Service) -> String {
    Topology::config().service("api", api).to_string()
}

fn l7_status(agent: &Agent) -> ServiceStats {
    let mut info = agent.status().agent.expect("an agent answers");
    info.l7.remove("api").unwrap_or_else(|| panic!("no l7 counters of api in {:?}", info.l7))
}

/// `{ protocol: PROTOCOL, tls: { ca: CA, server_name: NAME } }`.
fn upstream(protocol: &str, ca: &str, server_name: Option<&str>) -> String {
    let name = server_name.map_or(String::new(), |n| format!(", server_name: {n}"));
    format!("{{ protocol: {protocol}, tls: {{ ca: {ca}{name} }} }}")
}

#[test]
fn grpc_goes_over_h2_with_tls_to_the_endpoints_unary_streaming_and_a_metadata_canary() {
    let pki = Pki::named("upstream CA");
    let topo = topology();
    let issued = pki.issue(&["api.internal"], 1);
    serve_grpc_tls(&topo.blue, 50051, "v1", &issued.cert_pem, &issued.key_pem).expect("v1 backend");
    serve_grpc_tls(&topo.green, 50051, "v2", &issued.cert_pem, &issued.key_pem).expect("v2 backend");
    let h2 = upstream("h2", &pki.ca_file(), Some("api.internal"));
    let agent = Agent::start(&topo.lb, &config(api(50051, &h2)));
    let mut client = GrpcClient::connect(&topo.client, vip(8080));
    for i in 0..10 {
        let m = client.unary(&format!("plain {i}"), &[]).unwrap_or_else(|s| panic!("call {i}: {s:?}"));
        assert_eq!((m.served_by.as_str(), m.text), ("v1", format!("plain {i}")));
        let m = client.unary("marked", &[("x-canary", "true")]).unwrap_or_else(|s| panic!("call {i}: {s:?}"));
        assert_eq!((m.served_by.as_str(), m.canary.as_str()), ("v2", "true"), "the metadata canary routes");
    }
    // A bidirectional stream to the canary, message by message, and one
    // that fails: trailers come back through TLS too.
    let texts: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let (answers, end) = client.chat(&texts, &[("x-canary", "true")]);
    assert!(end.is_ok(), "the stream ends with grpc-status 0: {end:?}");
    assert_eq!(answers.iter().map(|m| m.text.clone()).collect::<Vec<_>>(), texts);
    assert!(answers.iter().all(|m| m.served_by == "v2"), "{answers:?}");
    let (answers, end) = client.chat(&["a".into(), "fail".into()], &[]);
    let status = end.expect_err("the stream fails");
    assert_eq!((status.code(), status.message(), answers.len()), (tonic::Code::Internal, "v1 was asked to fail", 1));
    let s = l7_status(&agent);
    assert_eq!(s.versions["v1"].grpc, [(0, 10), (13, 1)].into(), "{:?}", s.versions["v1"]);
    assert_eq!(s.versions["v2"].grpc, [(0, 11)].into(), "{:?}", s.versions["v2"]);
    assert_eq!(s.versions["v1"].bad_gateway + s.versions["v2"].bad_gateway, 0);
    // `auto` with tls: the client's HTTP/2 goes over h2 with TLS as well.
    let auto = upstream("auto", &pki.ca_file(), Some("api.internal"));
    let outcome = agent.reload_with(&config(api(50051, &auto)));
    assert!(outcome.contains("reloaded"), "{outcome}");
    let mut client = GrpcClient::connect(&topo.client, vip(8080));
    assert_eq!(client.unary("after", &[("x-canary", "true")]).expect("served over h2").served_by, "v2");
}

#[test]
fn http1_goes_over_tls_to_https_endpoints_verified_as_their_ip_and_keeps_the_clients_host() {
    let pki = Pki::named("upstream CA");
    let topo = topology();
    // No server_name: each endpoint is verified as its own address.
    serve_https(&topo.blue, 8443, "v1", &pki.issue(&[&BLUE.to_string()], 1));
    serve_https(&topo.green, 8443, "v2", &pki.issue(&[&GREEN.to_string()], 1));
    let agent = Agent::start(&topo.lb, &config(api(8443, &upstream("http1", &pki.ca_file(), None))));
    let client = Client::new(&topo.client);
    let mut reqs = Vec::new();
    for _ in 0..10 {
        reqs.push(get(vip(8080), "/", &[("host", "shop.example")]));
        reqs.push(get(vip(8080), "/", &[("host", "shop.example"), ("x-canary", "true")]));
    }
    let answers = client.send_all(&topo.client, reqs, 4, false);
    for (i, a) in answers.iter().enumerate() {
        let a = a.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}\nagent log:\n{}", agent.log()));
        let want = if i % 2 == 0 { "v1" } else { "v2" };
        assert_eq!((a.status, a.backend.as_str()), (StatusCode::OK, want), "request {i}: {a:?}");
        let seen = |h: &str| a.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(seen("x-seen-host"), "shop.example", "the endpoint sees the client's Host: {a:?}");
        assert_eq!(seen("x-seen-proto"), "http", "the client spoke clear text to the proxy: {a:?}");
    }
    // `h2` towards endpoints that serve only http/1.1 by ALPN: the
    // handshake fails (no common protocol), a failed connect with no
    // endpoint to try after it, the proxy's 502.
    let h2 = upstream("h2", &pki.ca_file(), Some(&BLUE.to_string()));
    assert!(agent.reload_with(&config(api(8443, &h2))).contains("reloaded"));
    let before = l7_status(&agent).versions["v1"].bad_gateway;
    let a = client.send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, false).remove(0).expect("an answer");
    assert_eq!((a.status, a.backend.as_str()), (StatusCode::BAD_GATEWAY, ""), "{a:?}");
    assert_eq!(l7_status(&agent).versions["v1"].bad_gateway, before + 1);
}

#[test]
fn a_ca_that_did_not_sign_the_endpoints_or_a_wrong_server_name_is_a_502_counted_as_bad_gateway() {
    let pki = Pki::named("upstream CA");
    let stranger = Pki::named("another CA");
    let topo = topology();
    let grpc = pki.issue(&["api.internal"], 1);
    serve_grpc_tls(&topo.blue, 50051, "v1", &grpc.cert_pem, &grpc.key_pem).expect("v1 backend");
    serve_grpc_tls(&topo.green, 50051, "v2", &grpc.cert_pem, &grpc.key_pem).expect("v2 backend");
    serve_https(&topo.blue, 8443, "v1", &pki.issue(&["api.internal"], 1));
    serve_https(&topo.green, 8443, "v2", &pki.issue(&["api.internal"], 1));
    let cases = [
        ("the wrong CA", stranger.ca_file(), "api.internal"),
        ("a name the certificates do not carry", pki.ca_file(), "other.internal"),
    ];
    let agent = Agent::start(&topo.lb, &config(api(50051, &upstream("h2", &cases[0].1, Some(cases[0].2)))));
    for (nth, (what, ca, name)) in cases.iter().enumerate() {
        if nth > 0 {
            assert!(agent.reload_with(&config(api(50051, &upstream("h2", ca, Some(name))))).contains("reloaded"));
        }
        // gRPC (h2 over TLS): the proxy's 502 as gRPC's UNAVAILABLE.
        let before = l7_status(&agent).versions["v1"].bad_gateway;
        let mut client = GrpcClient::connect(&topo.client, vip(8080));
        let status = client.unary("hello", &[]).expect_err(what);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{what}: {status:?}");
        assert_eq!(l7_status(&agent).versions["v1"].bad_gateway, before + 1, "{what}");
        // HTTP/1.1 over TLS: 502.
        let http1 = upstream("http1", ca, Some(name));
        assert!(agent.reload_with(&config(api(8443, &http1))).contains("reloaded"));
        let client = Client::new(&topo.client);
        let a = client.send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, false).remove(0).expect("an answer");
        assert_eq!((a.status, a.backend.as_str()), (StatusCode::BAD_GATEWAY, ""), "{what}: {a:?}");
        assert_eq!(l7_status(&agent).versions["v1"].bad_gateway, before + 2, "{what}");
    }
    // The right CA and name: served over both.
    let right = upstream("h2", &pki.ca_file(), Some("api.internal"));
    assert!(agent.reload_with(&config(api(50051, &right))).contains("reloaded"));
    let mut client = GrpcClient::connect(&topo.client, vip(8080));
    assert_eq!(client.unary("hello", &[]).expect("served").served_by, "v1");
    let right = upstream("http1", &pki.ca_file(), Some("api.internal"));
    assert!(agent.reload_with(&config(api(8443, &right))).contains("reloaded"));
    let a = Client::new(&topo.client).send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, false).remove(0);
    assert_eq!(a.expect("an answer").status, StatusCode::OK);
    // A failed handshake is a failed connect: a GET goes on to the next
    // endpoint of its version, so no client sees the endpoint whose
    // certificate another CA signed (green's :8443 answers as v2).
    serve_https(&topo.blue, 8444, "v1-stranger", &stranger.issue(&["api.internal"], 1));
    let v1 = Service::l7(vip(8080))
        .version("v1", [format!("{BLUE}:8444"), format!("{GREEN}:8443")])
        .weights(&[("v1", 1)])
        .with(&format!("upstream: {right}"));
    assert!(agent.reload_with(&config(v1)).contains("reloaded"));
    let reqs = (0..20).map(|_| get(vip(8080), "/", &[])).collect();
    let answers = Client::new(&topo.client).send_all(&topo.client, reqs, 2, false);
    for a in answers {
        let a = a.expect("an answer");
        assert_eq!((a.status, a.backend.as_str()), (StatusCode::OK, "v2"), "{a:?}");
    }
}

#[test]
fn a_bad_ca_file_is_refused_by_check_and_by_a_reload_and_the_running_proxy_keeps_serving() {
    let pki = Pki::named("upstream CA");
    let topo = topology();
    serve_https(&topo.blue, 8443, "v1", &pki.issue(&["api.internal"], 1));
    serve_https(&topo.green, 8443, "v2", &pki.issue(&["api.internal"], 1));
    let good = config(api(8443, &upstream("http1", &pki.ca_file(), Some("api.internal"))));
    let agent = Agent::start(&topo.lb, &good);
    let serves = |after: &str| {
        let a = Client::new(&topo.client).send_all(&topo.client, vec![get(vip(8080), "/", &[])], 1, false).remove(0);
        let a = a.unwrap_or_else(|e| panic!("after {after}: {e}"));
        assert_eq!((a.status, a.backend.as_str()), (StatusCode::OK, "v1"), "after {after}: {a:?}");
    };
    serves("the start");
    let check = |body: &str| {
        let file = pki.path("check.yaml");
        std::fs::write(&file, body).unwrap();
        let out = agent.cli().arg("check").arg("--config").arg(&file).output().expect("splitter check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = check(&good);
    assert!(ok, "the good CA checks:\n{out}");
    let says = format!("api: upstream http1 over tls, 1 CA certificate(s) from {}", pki.ca_file());
    assert!(out.contains(&says), "check says what it read:\n{out}");

    let write = |file: &str, text: &str| {
        std::fs::write(pki.path(file), text).unwrap();
        pki.path(file).display().to_string()
    };
    let missing = pki.path("missing.pem").display().to_string();
    let text = write("text.pem", "not a certificate\n");
    let key = write("key.pem", &pki.issue(&["x"], 1).key_pem);
    let garbage = write("garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let bad = [
        (missing.clone(), vec![format!("cannot read {missing}")]),
        (text.clone(), vec![format!("no CERTIFICATE in {text}")]),
        (key.clone(), vec![format!("no CERTIFICATE in {key}")]),
        (garbage.clone(), vec![format!("none of the 1 certificates in {garbage} can be a trust anchor")]),
        (pki.dir.path().display().to_string(), vec![format!("{} is a directory", pki.dir.path().display())]),
    ];
    for (ca, says) in &bad {
        let body = config(api(8443, &upstream("http1", ca, Some("api.internal"))));
        let (ok, out) = check(&body);
        assert!(!ok, "check passed the CA file {ca}:\n{out}");
        for s in says.iter().chain([&"services.api.upstream.tls.ca: ".to_owned()]) {
            assert!(out.contains(s.as_str()), "check of {ca} does not say {s:?}:\n{out}");
        }
        let outcome = agent.reload_with(&body);
        assert!(outcome.contains("reload refused"), "{outcome}");
        for s in says.iter().chain([&"services.api.upstream.tls.ca: ".to_owned()]) {
            assert!(outcome.contains(s.as_str()), "the refused reload of {ca} does not say {s:?}: {outcome}");
        }
        serves(&format!("the refused reload of {ca}"));
    }
}

/// Not root: the error of a connect to an endpoint that completes the
/// handshake without choosing h2 names what it chose (here: nothing), and
/// is a connect error (the next endpoint is tried).
#[test]
fn an_endpoint_that_does_not_choose_h2_is_a_connect_error_naming_what_it_chose() {
    let pki = Pki::named("upstream CA");
    let issued = pki.issue(&["127.0.0.1"], 1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        // No ALPN: the server picks none (as HTTP/1.1-only servers do).
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _held = acceptor.accept(tcp).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let svc: splitter_model::config::Service = serde_json::from_value(serde_json::json!({
            "listen": "127.0.0.1:1", "protocol": "tcp", "mode": "l7",
            "versions": { "v1": [endpoint.to_string()] },
            "upstream": { "protocol": "h2", "tls": { "ca": pki.path("ca.pem") } },
        }))
        .unwrap();
        let upstreams = splitter_user::l7::upstream::Upstreams::for_service(&svc).expect("the CA loads");
        let (head, _) = Request::get("http://api/").body(()).unwrap().into_parts();
        let body = http_body_util::Empty::new().map_err(|never| match never {}).boxed();
        let via = upstreams.via(http::Version::HTTP_2, false);
        let err = upstreams.send(via, endpoint, head, body, None).await.expect_err("h2 over an http/1.1 endpoint");
        assert!(err.is_connect(), "{err}");
        let msg = err.to_string();
        let says = format!("{endpoint} chose no ALPN protocol where protocol h2 needs \"h2\"");
        assert!(msg.contains(&says), "{msg}");
    });
}
