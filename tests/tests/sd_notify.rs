//! Tier 3, systemd's notify protocol (`Type=notify`): the real agent runs
//! with `NOTIFY_SOCKET` naming a datagram socket the test listens on, as
//! systemd's own, and `WATCHDOG_USEC` set. It says READY=1 once it serves
//! (its control socket answers), pings WATCHDOG=1 from its loop,
//! RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP, and
//! STOPPING=1 on SIGTERM.

use std::{
    os::unix::net::UnixDatagram,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use splitter_testkit::{
    config::Service,
    topology::{vip, Topology},
};
use splitter_tests::{agent::Agent, netns::topology};

/// Every message the socket gets, in order, as its lines.
fn listen(sock: UnixDatagram) -> Arc<Mutex<Vec<Vec<String>>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                g.lock().unwrap().push(text.lines().map(str::to_owned).collect());
            }
        }
    });
    got
}

fn wait_for(got: &Mutex<Vec<Vec<String>>>, what: &str, done: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
    let start = Instant::now();
    loop {
        let seen = got.lock().unwrap().clone();
        if done(&seen) {
            return seen;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: got {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn first(msg: &[String]) -> &str {
    msg.first().map_or("", String::as_str)
}

#[test]
fn the_agent_says_ready_reloading_and_stopping_and_pings_the_watchdog() {
    let topo = topology();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let got = listen(UnixDatagram::bind(&path).expect("the notify socket"));
    let config = Topology::config()
        .service("api", Service::l7(vip(8080)).on_blue("v1", 8081).on_green("v2", 8081).weights(&[("v1", 1)]))
        .to_string();
    let path_text = path.display().to_string();
    let mut agent = Agent::start_env(&topo.lb, &config, &[("NOTIFY_SOCKET", &path_text), ("WATCHDOG_USEC", "1000000")]);
    assert!(agent.info().is_some(), "it serves its control socket");

    // READY first, with a status line; nothing before it.
    let seen = wait_for(&got, "READY=1", |m| m.iter().any(|m| first(m) == "READY=1"));
    assert_eq!(first(&seen[0]), "READY=1", "{seen:?}");
    assert!(seen[0].iter().any(|l| l.starts_with("STATUS=serving 1 services")), "{seen:?}");

    // The watchdog, every half of WATCHDOG_USEC.
    let at = Instant::now();
    wait_for(&got, "three watchdog pings", |m| m.iter().filter(|m| first(m) == "WATCHDOG=1").count() >= 3);
    assert!(at.elapsed() < Duration::from_secs(3), "pinged every ~500 ms: {:?}", at.elapsed());

    // SIGHUP: RELOADING with the monotonic time, then READY again.
    let before = got.lock().unwrap().len();
    agent.reload().expect("SIGHUP");
    let seen = wait_for(&got, "RELOADING then READY", |m| {
        let after: Vec<&str> = m[before..].iter().map(|m| first(m)).filter(|f| *f != "WATCHDOG=1").collect();
        after.len() >= 2
    });
    let after: Vec<&Vec<String>> = seen[before..].iter().filter(|m| first(m) != "WATCHDOG=1").collect();
    assert_eq!((first(after[0]), first(after[1])), ("RELOADING=1", "READY=1"), "{after:?}");
    assert!(
        after[0].iter().any(|l| l.strip_prefix("MONOTONIC_USEC=").is_some_and(|v| v.parse::<u64>().is_ok())),
        "{after:?}"
    );

    // SIGTERM: STOPPING.
    let before = got.lock().unwrap().len();
    assert!(agent.stop_ok(), "{}", agent.log());
    let seen = wait_for(&got, "STOPPING=1", |m| m[before..].iter().any(|m| first(m) == "STOPPING=1"));
    let stopping = seen[before..].iter().find(|m| first(m) == "STOPPING=1").unwrap();
    assert!(stopping.iter().any(|l| l == "STATUS=stopping; the data path keeps serving"), "{stopping:?}");
}
