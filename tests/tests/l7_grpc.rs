//! Tier 3, gRPC through the l7 proxy: real tonic servers (v1 on blue, v2
//! on green, a shadow) and a real tonic client in the client namespace;
//! `upstream.protocol: auto` carries HTTP/2 from the client to the
//! endpoints. Unary and bidirectional streaming calls, a metadata canary,
//! trailers (grpc-status, grpc-message) end to end, grpc-status counted and
//! judged by a rollout, and unary calls mirrored and compared.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use splitter_testkit::{
    config::Service,
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::Agent,
    grpc::{serve_grpc, GrpcClient},
    netns::topology,
};
use splitter_user::l7::ServiceStats;

/// api (l7, gRPC) on the VIP's :8080: v1 (blue) and v2 (green) on :50051, a
/// shadow on blue's :50052; metadata `x-canary: true` goes to v2.
fn api(upstream: &str) -> Service {
    Service::l7(vip(8080))
        .on_blue("v1", 50051)
        .on_green("v2", 50051)
        .on_blue("shadow", 50052)
        .weights(&[("v1", 1)])
        .route(r#"{ headers: { x-canary: "true" } }"#, "v2")
        .with(upstream)
}

fn setup(api: Service) -> (Topology, Agent, SocketAddr) {
    let topo = topology();
    serve_grpc(&topo.blue, 50051, "v1").expect("v1 backend");
    serve_grpc(&topo.green, 50051, "v2").expect("v2 backend");
    serve_grpc(&topo.blue, 50052, "shadow").expect("shadow backend");
    let agent = Agent::start(&topo.lb, &Topology::config().service("api", api).to_string());
    (topo, agent, vip(8080))
}

fn l7_status(agent: &Agent) -> ServiceStats {
    let mut info = agent.status().agent.expect("an agent answers");
    info.l7.remove("api").unwrap_or_else(|| panic!("no l7 counters of api in {:?}", info.l7))
}

#[test]
fn unary_and_streaming_grpc_pass_with_trailers_and_a_metadata_canary_and_statuses_are_counted() {
    let (topo, agent, vip) = setup(api("upstream: { protocol: auto }"));
    let mut client = GrpcClient::connect(&topo.client, vip);
    for i in 0..20 {
        let m = client.unary(&format!("plain {i}"), &[]).unwrap_or_else(|s| panic!("call {i}: {s:?}"));
        assert_eq!((m.served_by.as_str(), m.text), ("v1", format!("plain {i}")));
        let m = client.unary("marked", &[("x-canary", "true")]).unwrap_or_else(|s| panic!("call {i}: {s:?}"));
        assert_eq!(
            (m.served_by.as_str(), m.canary.as_str()),
            ("v2", "true"),
            "metadata routes and reaches the backend"
        );
    }
    // A bidirectional stream, message by message, to the canary; its end
    // (the trailers' OK) reaches the client.
    let texts: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    let (answers, end) = client.chat(&texts, &[("x-canary", "true")]);
    assert!(end.is_ok(), "the stream ends with grpc-status 0: {end:?}");
    assert_eq!(answers.iter().map(|m| m.text.clone()).collect::<Vec<_>>(), texts);
    assert!(answers.iter().all(|m| m.served_by == "v2"), "{answers:?}");
    // Failures carry their status and message through the trailers, on a
    // stream (after 2 answers) and on a unary call.
    let (answers, end) = client.chat(&["a".into(), "b".into(), "fail".into()], &[]);
    let status = end.expect_err("the stream fails");
    assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "v1 was asked to fail"));
    assert_eq!(answers.len(), 2);
    let status = client.unary("fail", &[]).expect_err("the call fails");
    assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "v1 was asked to fail"));

    // Counted by grpc-status, per version: a stream is one request.
    let s = l7_status(&agent);
    let (v1, v2) = (&s.versions["v1"], &s.versions["v2"]);
    assert_eq!(v1.grpc, [(0, 20), (13, 2)].into(), "{v1:?}");
    assert_eq!(v2.grpc, [(0, 21)].into(), "{v2:?}");
    assert_eq!((v1.requests, v2.requests, v1.responses_2xx), (22, 21, 22));
    let shown = agent.cli().args(["status", "--socket"]).arg(&agent.control_socket).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("v1: gRPC 20 ok, 2 failed (by grpc-status: 20×0, 2×13)"), "{shown}");
}

#[test]
fn grpc_towards_http1_endpoints_is_refused_with_the_reason() {
    let (topo, agent, vip) = setup(api("proxy: { connect_timeout_ms: 500 }"));
    let mut client = GrpcClient::connect(&topo.client, vip);
    let status = client.unary("hello", &[]).expect_err("gRPC cannot go over HTTP/1.1");
    // The proxy answers as gRPC: UNAVAILABLE (HTTP 502's), saying why.
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "gRPC needs HTTP/2 to the endpoints: set upstream.protocol to h2c, h2 or auto",
        "{status:?}"
    );
    assert_eq!(l7_status(&agent).versions["v1"].bad_gateway, 1);
    // h2c towards the endpoints serves it.
    let config = Topology::config().service("api", api("upstream: { protocol: h2c }")).to_string();
    agent.reload_with(&config);
    let mut client = GrpcClient::connect(&topo.client, vip);
    assert_eq!(client.unary("hello", &[]).expect("served over h2c").served_by, "v1");
}

#[test]
fn a_canary_failing_grpc_calls_is_rolled_back_though_every_answer_is_http_200() {
    let (topo, agent, vip) = setup(api("upstream: { protocol: auto }"));
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = GrpcClient::connect(&topo.client, vip);
            for _ in 0..3000 {
                if stop.load(Relaxed) {
                    break;
                }
                match client.unary("fail-on-v2", &[]) {
                    Ok(_) => ok.fetch_add(1, Relaxed),
                    Err(_) => failed.fetch_add(1, Relaxed),
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        while ok.load(Relaxed) < 20 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let args = ["api", "--to", "v2", "--steps", "20,50,100", "--interval", "20s", "--min-requests", "10"];
        let mut rollout = agent.cli();
        rollout.arg("rollout").args(args).args(["--max-error-rate", "5%", "--socket"]).arg(&agent.control_socket);
        let out = rollout.output().expect("run splitter rollout");
        stop.store(true, Relaxed);
        out
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a rolled-back rollout fails the command: {text}");
    assert!(text.contains("rolled back: step 1 (20%): error rate"), "{text}");
    assert!(failed.load(Relaxed) >= 10, "the canary was tried: {} failed", failed.load(Relaxed));
    let v2 = &l7_status(&agent).versions["v2"];
    assert_eq!(v2.responses_5xx + v2.bad_gateway, 0, "every answer was HTTP 200: {v2:?}");
    assert!(v2.grpc_errors() >= 10, "{v2:?}");
}

#[test]
fn unary_grpc_is_mirrored_and_compared_with_its_status() {
    // gRPC calls are POSTs; a mirror copies GET and HEAD unless told.
    let mirror = "mirror: { version: shadow, percent: 100, compare: true, methods: [POST] }";
    let (topo, agent, vip) = setup(api("upstream: { protocol: auto }").with(mirror));
    let mut client = GrpcClient::connect(&topo.client, vip);
    for i in 0..10 {
        assert_eq!(client.unary(&format!("m{i}"), &[]).expect("served").served_by, "v1");
    }
    // The shadow fails these: the client still gets v1's answer.
    for _ in 0..5 {
        assert_eq!(client.unary("fail-on-shadow", &[]).expect("served by v1").served_by, "v1");
    }
    let m = agent.eventually(
        "every copy settled",
        Duration::from_secs(15),
        || l7_status(&agent).mirror.expect("mirror counters"),
        |m| m.settled() && m.compared >= 15,
    );
    assert_eq!((m.sent, m.compared, m.differ), (15, 15, 15), "{m:?}");
    let out = agent.cli().args(["diffs", "api", "--json", "--socket"]).arg(&agent.control_socket).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let diffs: Vec<&str> = report["samples"].as_array().unwrap().iter().filter_map(|s| s["diff"].as_str()).collect();
    assert_eq!(diffs.iter().filter(|d| **d == "grpc-status 0 vs 13").count(), 5, "{diffs:?}");
    assert!(
        diffs.iter().filter(|d| d.starts_with("body differs")).count() == 10,
        "the shadow names itself in its answers: {diffs:?}"
    );
    assert!(report["samples"].as_array().unwrap().iter().all(|s| s["request"] == "POST /echo.Echo/Unary"), "{report}");
}
