//! Tier 3, virtual hosts: several l7 services on one address, told apart
//! by `Host` (or `:authority`), and by the TLS server name for their
//! certificates. Real hyper backends (api on blue, www on green, a default
//! on blue's :8082), a real hyper client and a rustls client.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use http::StatusCode;
use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, Client},
    topology::{vip, Topology},
};
use splitter_tests::{
    agent::Agent,
    netns::topology,
    tls::{block, connect, Pki, H1, H2},
};

/// `api` (hosts api.example.com and *.api.example.com, on blue :8081) and
/// `www` (www.example.com, green :8081) on `listen`, each with `more`; and
/// `rest` without hosts (blue :8082) when `with_default`.
fn config(listen: SocketAddr, more: &dyn Fn(&str) -> String, with_default: bool) -> Config {
    let api = Service::l7(listen)
        .on_blue("v1", 8081)
        .weights(&[("v1", 1)])
        .with(r#"hosts: [api.example.com, "*.api.example.com"]"#)
        .with(&more("api"));
    let www = Service::l7(listen).on_green("v1", 8081).weights(&[("v1", 1)]).with("hosts: [www.example.com]");
    let www = www.with(&more("www"));
    let config = Topology::config().service("api", api).service("www", www);
    if with_default {
        config.service("rest", Service::l7(listen).on_blue("v1", 8082).weights(&[("v1", 1)]).with(&more("rest")))
    } else {
        config
    }
}

fn backends(topo: &Topology) {
    serve_http(&topo.blue, 8081, "api").expect("api backend");
    serve_http(&topo.green, 8081, "www").expect("www backend");
    serve_http(&topo.blue, 8082, "rest").expect("rest backend");
}

/// The backend (or status) that answers `host` on the VIP's :8080.
fn served(client: &Client, topo: &Topology, host: &str) -> String {
    let answer = client.send_all(&topo.client, vec![get(vip(8080), "/", &[("host", host)])], 1, false).remove(0);
    let a = answer.unwrap_or_else(|e| panic!("{host}: {e}"));
    if a.status == StatusCode::OK {
        a.backend
    } else {
        a.status.as_u16().to_string()
    }
}

#[test]
fn services_sharing_an_address_are_picked_by_host_and_an_unknown_host_gets_404() {
    let topo = topology();
    backends(&topo);
    let none = |_: &str| String::new();
    let agent = Agent::start(&topo.lb, &config(vip(8080), &none, false).to_string());
    let client = Client::new(&topo.client);
    for (host, want) in [
        ("api.example.com", "api"),
        ("v2.api.example.com", "api"),
        ("a.b.api.example.com", "api"),
        ("API.Example.COM.", "api"),
        ("www.example.com:8080", "www"),
        ("shop.example.com", "404"),
        ("example.com", "404"),
    ] {
        assert_eq!(served(&client, &topo, host), want, "{host}");
    }
    // HTTP/1.0 without Host: no host, no default service.
    let answer = topo.client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip(8080), Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    assert!(answer.starts_with("HTTP/1.0 404"), "{answer}");
    let info = agent.info().expect("status");
    assert_eq!((info.l7["api"].versions["v1"].requests, info.l7["www"].versions["v1"].requests), (4, 1));

    // A default service takes the hosts no other claims; the others keep theirs.
    assert!(agent.reload_with(&config(vip(8080), &none, true).to_string()).contains("reloaded"));
    for (host, want) in [("shop.example.com", "rest"), ("api.example.com", "api"), ("www.example.com", "www")] {
        assert_eq!(served(&client, &topo, host), want, "{host}");
    }
    // Two services claiming one host on one address: refused, nothing changes.
    let clash = Topology::config()
        .service(
            "api",
            Service::l7(vip(8080)).on_blue("v1", 8081).weights(&[("v1", 1)]).with("hosts: [api.example.com]"),
        )
        .service(
            "www",
            Service::l7(vip(8080)).on_green("v1", 8081).weights(&[("v1", 1)]).with("hosts: [API.example.com]"),
        )
        .to_string();
    let outcome = agent.reload_with(&clash);
    assert!(
        outcome.contains("reload refused")
            && outcome.contains("host \"API.example.com\"")
            && outcome.contains("is already claimed by service \"api\""),
        "{outcome}"
    );
    assert_eq!(served(&client, &topo, "www.example.com"), "www");
}

#[test]
fn the_tls_name_picks_the_services_certificate_and_a_request_for_another_service_on_it_gets_421() {
    let topo = topology();
    backends(&topo);
    let pki = Pki::new();
    let api_cert = pki.issue(&["api.example.com", "*.api.example.com"], 1);
    let www_cert = pki.issue(&["www.example.com"], 2);
    let pairs = [("api", pki.write("api", &api_cert)), ("www", pki.write("www", &www_cert))];
    let tls = |name: &str| {
        let pair = &pairs.iter().find(|(n, _)| *n == name).expect("a pair").1;
        format!("tls: {{ certificates: [{pair}] }}")
    };
    let listen = vip(8443);
    let _agent = Agent::start(&topo.lb, &config(listen, &tls, false).to_string());
    let h2 = pki.client(&[H2], true);
    let h1 = pki.client(&[H1], true);
    block(&topo.client, async move {
        // Each name gets its service's certificate and its backend.
        for (name, der, backend) in [
            ("api.example.com", &api_cert.der, "api"),
            ("v2.api.example.com", &api_cert.der, "api"),
            ("www.example.com", &www_cert.der, "www"),
        ] {
            for config in [h1.clone(), h2.clone()] {
                let mut conn = connect(listen, config, name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(&conn.cert, der, "{name} got its service's certificate");
                let a = conn.get("/", &[]).await.expect("an answer");
                assert_eq!((a.status, a.backend.as_str()), (StatusCode::OK, backend), "{name}");
            }
        }
        // An h2 connection made for api, asked for www (a client reusing it):
        // 421, and a new connection for www is served.
        let mut conn = connect(listen, h2.clone(), "api.example.com").await.expect("a connection");
        conn.name = "www.example.com".into();
        let a = conn.get("/", &[]).await.expect("an answer");
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{a:?}");
        conn.name = "v3.api.example.com".into();
        assert_eq!(conn.get("/", &[]).await.expect("an answer").backend, "api", "its own hosts still pass");
        let mut conn = connect(listen, h2, "www.example.com").await.expect("a connection");
        assert_eq!(conn.get("/", &[]).await.expect("an answer").backend, "www");
    });
}
