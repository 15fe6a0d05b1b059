//! Tier 3, announcing VIPs (`announce:`): the real agent keeps its VIPs on a
//! dummy interface, a real BIRD 2 in the lb namespace runs the shipped
//! example (`packaging/bgp/bird.conf`; and real FRR the other,
//! `packaging/bgp/frr.conf`) and announces them by eBGP to a real BIRD in
//! the client namespace, the router, which installs them in its FIB
//! (the client has no other route to them). Connections follow the routes;
//! `splitter node drain` withdraws them (kept across a restart) and
//! `undrain` announces them again; stopping the agent keeps them; `splitter
//! down` withdraws them before the data path goes, and a VIP whose
//! services have no healthy endpoint is withdrawn until one is back. An l7
//! VIP is local without any `ip addr`.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use splitter_testkit::{
    config::{Config, Service},
    http::{get, serve_http, Client},
    serve::{ask_version, serve_tcp, serve_tcp_stoppable},
    topology::Topology,
};
use splitter_tests::{agent::Agent, bird::Bird, frr::Frr, netns::topology};

/// VIPs outside everything the topology routes: reachable only by BGP.
const SHOP: &str = "198.18.0.10:80";
const API: &str = "198.18.0.20:8080";
const TIMEOUT: Duration = Duration::from_secs(3);

/// The router's side (in the client namespace): takes what the node
/// announces into its kernel table.
const ROUTER: &str = r#"
router id 192.0.2.2;
protocol device { }
protocol kernel { ipv4 { export all; }; merge paths on; }
protocol bgp lb {
    local 192.0.2.2 as 65000;
    neighbor 192.0.2.1 as 65001;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 10;
    hold time 9;
    keepalive time 3;
    ipv4 { import all; export none; };
}
"#;

fn config() -> Config {
    Topology::config()
        .setting("announce: { interface: splitter0, settle: 2s }")
        // Short aging: `node drain --wait` sees the table empty soon.
        .setting("flow_aging: { tcp_idle_secs: 2, closing_secs: 1, sweep_secs: 1 }")
        .service("shop", Service::tcp(SHOP).blue_green(8080).weights(&[("blue", 1), ("green", 1)]))
        .service("api", Service::l7(API).on_blue("v1", 8081).weights(&[("v1", 1)]))
}

/// The router's routes to the VIPs, as its kernel has them.
fn routes(topo: &Topology) -> String {
    topo.client.ip(&["-4", "route", "show", "proto", "bird"]).unwrap_or_default()
}

fn announced(topo: &Topology) -> bool {
    let r = routes(topo);
    r.contains("198.18.0.10 via 192.0.2.1") && r.contains("198.18.0.20 via 192.0.2.1")
}

fn withdrawn(topo: &Topology) -> bool {
    !routes(topo).contains("198.18.0.")
}

/// One connection to shop (l4, the kernel's) from the client.
fn shop_served(topo: &Topology) -> Result<String, String> {
    let shop: SocketAddr = SHOP.parse().unwrap();
    topo.client.run(|| {
        let c = TcpStream::connect_timeout(&shop, TIMEOUT).map_err(|e| format!("shop: {e}"))?;
        c.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        ask_version(&c).map_err(|e| format!("shop: {e}"))
    })
}

/// One connection to shop and one request to api (l7, the agent's proxy).
fn served(topo: &Topology) -> Result<(), String> {
    shop_served(topo)?;
    let answer = Client::new(&topo.client)
        .send_all(&topo.client, vec![get(API.parse().unwrap(), "/", &[])], 1, false)
        .remove(0)
        .map_err(|e| format!("api: {e}"))?;
    (answer.backend == "v1").then_some(()).ok_or(format!("api answered by {}", answer.backend))
}

#[test]
fn vips_are_announced_by_bgp_withdrawn_on_drain_and_before_down_and_kept_when_the_agent_stops() {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).unwrap();
    }
    serve_http(&topo.blue, 8081, "v1").unwrap();
    // The client reaches the VIPs only through what BGP installs.
    topo.client.ip(&["route", "del", "default"]).expect("dropping the client's default route");
    let mut agent = Agent::start(&topo.lb, &config().to_string());
    let node_conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bgp/bird.conf"))
        .expect("the shipped BIRD example");
    let _node = Bird::start(&topo.lb, &node_conf);
    let router = Bird::start(&topo.client, ROUTER);

    // Announced: the router installs both VIPs, and traffic follows.
    agent.eventually("both VIPs in the router's FIB", Duration::from_secs(30), || routes(&topo), |_| announced(&topo));
    served(&topo).unwrap_or_else(|e| panic!("{e}\nrouter: {:?}", router.birdc(&["show", "protocols", "all"])));
    // A dummy interface (ifb where the kernel has no dummy driver).
    let link = topo.lb.ip(&["-d", "addr", "show", "dev", "splitter0"]).unwrap();
    let kind = link.contains(" dummy ") || link.contains(" ifb ");
    assert!(kind && link.contains("198.18.0.10/32") && link.contains("198.18.0.20/32"), "{link}");
    let lo = topo.lb.ip(&["addr", "show", "dev", "lo"]).unwrap();
    assert!(!lo.contains("198.18.0.20"), "the l7 VIP is local through the announce interface: {lo}");
    let status = String::from_utf8_lossy(
        &agent.cli().args(["status", "--config"]).arg(&agent.config_path).output().unwrap().stdout,
    )
    .into_owned();
    assert!(status.contains("announce on splitter0: 198.18.0.10, 198.18.0.20"), "{status}");

    // Drained: withdrawn at once (BGP withdraws without waiting for timers);
    // `--wait` returns once the flows of before have aged out of the table.
    assert!(agent.status().active_flows > 0, "the flows just served are in the table");
    let started = Instant::now();
    let drain = std::thread::scope(|s| {
        let drain = s.spawn(|| agent.control(&["node", "drain", "--wait", "--timeout", "30s"]));
        agent.eventually(
            "the VIPs gone from the router",
            Duration::from_secs(10),
            || routes(&topo),
            |_| withdrawn(&topo),
        );
        assert!(started.elapsed() < Duration::from_secs(5), "withdrawn in {:?}", started.elapsed());
        drain.join().unwrap()
    });
    let (ok, out, err) = drain;
    assert!(ok && out.contains("node drained: withdrew 198.18.0.10, 198.18.0.20"), "{out}{err}");
    assert!(out.contains("drained: no flows left in the flow table"), "{out}{err}");
    assert_eq!(agent.status().active_flows, 0);
    assert!(served(&topo).is_err(), "the client has no route left");
    // The l7 VIP stays local on the node (its own connections may finish).
    let lo = topo.lb.ip(&["addr", "show", "dev", "lo"]).unwrap();
    assert!(lo.contains("198.18.0.20"), "{lo}");
    // Drained survives a restart; a second drain changes nothing.
    agent.restart(&topo.lb).expect("restart");
    std::thread::sleep(Duration::from_secs(2));
    assert!(withdrawn(&topo), "a restarted drained node announced: {}", routes(&topo));
    let (ok, out, _) = agent.control(&["node", "drain"]);
    assert!(ok && out.contains("already drained"), "{out}");
    let status = agent.status();
    let a = status.agent.unwrap().announce.expect("announce info");
    assert!(a.drained && a.announced.is_empty(), "{a:?}");

    // Undrained: back, and served.
    let (ok, out, err) = agent.control(&["node", "undrain"]);
    assert!(ok && out.contains("node undrained: announcing 198.18.0.10, 198.18.0.20"), "{out}{err}");
    agent.eventually("the VIPs back in the router", Duration::from_secs(10), || routes(&topo), |_| announced(&topo));
    served(&topo).unwrap();

    // The agent stops (SIGTERM): still announced, and the pinned data path
    // serves l4; l7 has no proxy until an agent runs again (the trade-off
    // the README states).
    agent.stop().expect("stopping the agent");
    std::thread::sleep(Duration::from_secs(2));
    assert!(announced(&topo), "stopping the agent withdrew: {}", routes(&topo));
    shop_served(&topo).expect("the pinned data path serves l4 while announced");
    agent.start_again(&topo.lb).expect("start again");

    // `down`: withdrawn first, the data path removed after `settle`.
    std::thread::scope(|s| {
        let down = s.spawn(|| agent.down());
        let started = Instant::now();
        let (mut gone, mut detached) = (None, None);
        while started.elapsed() < Duration::from_secs(20) && (gone.is_none() || detached.is_none()) {
            if gone.is_none() && withdrawn(&topo) {
                gone = Some(started.elapsed());
            }
            if detached.is_none() && !topo.lb.has_xdp("lb-client").unwrap_or(true) {
                detached = Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        down.join().unwrap().expect("splitter down");
        let (Some(gone), Some(detached)) = (gone, detached) else {
            panic!("withdrawn at {gone:?}, XDP detached at {detached:?}");
        };
        assert!(gone + Duration::from_secs(1) < detached, "withdrawn at {gone:?}, XDP detached at {detached:?}");
    });
    assert!(topo.lb.ip(&["link", "show", "dev", "splitter0"]).is_err(), "down removes the announce interface");
}

#[test]
fn the_shipped_frr_example_announces_the_vips_and_withdraws_them_on_drain() {
    let topo = topology();
    for (ns, name) in topo.backends() {
        serve_tcp(ns, 8080, name).unwrap();
    }
    serve_http(&topo.blue, 8081, "v1").unwrap();
    topo.client.ip(&["route", "del", "default"]).expect("dropping the client's default route");
    let agent = Agent::start(&topo.lb, &config().to_string());
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bgp/frr.conf"))
        .expect("the shipped FRR example");
    let frr = Frr::start(&topo.lb, &conf);
    let router = Bird::start(&topo.client, ROUTER);
    let state = || format!("router: {:?}\n{}", router.birdc(&["show", "route"]), frr.logs());
    let limit = Duration::from_secs(30);
    let waited = agent.eventually("both VIPs in the router's FIB", limit, || routes(&topo), |_| announced(&topo));
    assert!(announced(&topo), "{waited}\n{}", state());
    served(&topo).unwrap_or_else(|e| panic!("{e}\n{}", state()));
    let (ok, out, err) = agent.control(&["node", "drain"]);
    assert!(ok, "{out}{err}");
    agent.eventually("the VIPs gone from the router", Duration::from_secs(10), || routes(&topo), |_| withdrawn(&topo));
    let (ok, out, err) = agent.control(&["node", "undrain"]);
    assert!(ok, "{out}{err}");
    agent.eventually("the VIPs back in the router", Duration::from_secs(10), || routes(&topo), |_| announced(&topo));
    served(&topo).unwrap();
}

#[test]
fn a_vip_whose_services_have_no_healthy_endpoint_is_withdrawn_until_one_is_back() {
    let topo = topology();
    let mut backends: Vec<_> =
        topo.backends().iter().map(|(ns, name)| serve_tcp_stoppable(ns, 8080, name).unwrap()).collect();
    serve_http(&topo.blue, 8081, "v1").unwrap();
    topo.client.ip(&["route", "del", "default"]).expect("dropping the client's default route");
    let checked = Topology::config()
        .setting("announce: { interface: splitter0, settle: 2s }")
        .service(
            "shop",
            Service::tcp(SHOP)
                .blue_green(8080)
                .weights(&[("blue", 1), ("green", 1)])
                .with("health: { interval: 300ms, timeout: 200ms, unhealthy_after: 2, healthy_after: 2 }"),
        )
        .service("api", Service::l7(API).on_blue("v1", 8081).weights(&[("v1", 1)]));
    let agent = Agent::start(&topo.lb, &checked.to_string());
    let node_conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/bgp/bird.conf"))
        .expect("the shipped BIRD example");
    let _node = Bird::start(&topo.lb, &node_conf);
    let _router = Bird::start(&topo.client, ROUTER);
    agent.eventually("both VIPs in the router's FIB", Duration::from_secs(30), || routes(&topo), |_| announced(&topo));

    // Every endpoint of shop dies: its VIP leaves the router; api's stays.
    for b in &mut backends {
        b.stop();
    }
    let shop_gone = |r: &String| !r.contains("198.18.0.10 ") && r.contains("198.18.0.20 via 192.0.2.1");
    agent.eventually("shop's VIP withdrawn, api's kept", Duration::from_secs(10), || routes(&topo), shop_gone);
    let status = String::from_utf8_lossy(
        &agent.cli().args(["status", "--config"]).arg(&agent.config_path).output().unwrap().stdout,
    )
    .into_owned();
    assert!(status.contains("withdrawn 198.18.0.10: no healthy endpoint in shop"), "{status}");

    // One is back: announced again, and served.
    backends[0] = serve_tcp_stoppable(&topo.blue, 8080, "blue").unwrap();
    agent.eventually("shop's VIP back", Duration::from_secs(10), || routes(&topo), |_| announced(&topo));
    assert_eq!(shop_served(&topo).unwrap(), "blue");
}
