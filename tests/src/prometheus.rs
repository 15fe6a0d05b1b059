//! A real Prometheus (Debian's `prometheus`) for the release-analysis
//! tests, run in a namespace the test built, scraping a small KPI exporter
//! the test serves: per-version gauges the test sets while a rollout runs.
//! Both are guards: dropping them stops them.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use splitter_testkit::netns::{unique_name, NetNs};

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    pub listen: SocketAddr,
}

impl Prometheus {
    /// Prometheus in `ns` on `listen`, scraping `targets` every second;
    /// returns once it answers `/-/ready` (15 s at most, else panics).
    pub fn start(ns: &NetNs, listen: SocketAddr, targets: &[SocketAddr]) -> Prometheus {
        Prometheus::start_with(ns, listen, targets, None)
    }

    /// [`Prometheus::start`] serving HTTPS with `tls` (certificate and key
    /// files) when given; then ready once its log says so.
    pub fn start_with(
        ns: &NetNs,
        listen: SocketAddr,
        targets: &[SocketAddr],
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Prometheus {
        assert!(
            std::path::Path::new("/usr/bin/prometheus").exists(),
            "prometheus is not installed: the release-analysis tests need Debian's prometheus (`cargo xtask bootstrap` installs it)"
        );
        let dir = std::env::temp_dir().join(unique_name("prom"));
        std::fs::create_dir_all(&dir).expect("Prometheus's directory");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: kpi\n    static_configs: [{{ targets: [{}] }}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let mut cmd = ns.command("/usr/bin/prometheus");
        if let Some((cert, key)) = tls {
            let web = format!("tls_server_config:\n  cert_file: {}\n  key_file: {}\n", cert.display(), key.display());
            std::fs::write(dir.join("web.yml"), web).expect("web.yml");
            cmd.arg(format!("--web.config.file={}", dir.join("web.yml").display()));
        }
        let child = cmd
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("its log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
        let p = Prometheus { child: Mutex::new(Some(child)), dir, listen };
        let start = Instant::now();
        let ready = || match tls {
            None => get(ns, listen, "/-/ready").is_some_and(|(status, _)| status == 200),
            Some(_) => p.log().contains("Server is ready to receive web requests"),
        };
        while !ready() {
            let exited = p.child.lock().expect("child").as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("prometheus exited at start ({status}): {}", p.log());
            }
            assert!(start.elapsed() < Duration::from_secs(15), "prometheus not ready in 15 s: {}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The instant value of `promql`, if it has exactly one.
    pub fn value(&self, ns: &NetNs, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (_, body) = get(ns, self.listen, &format!("/api/v1/query?query={encoded}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    /// Stops it (SIGKILL): queries get no answer from now on.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("child").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on `addr` from inside `ns`: status and body.
fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    })
}

/// An exporter of per-version KPI gauges (`NAME{version="V"} VALUE`), the
/// values set by the test; stops on drop.
pub struct KpiExporter {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
    stop: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

impl KpiExporter {
    /// Serves `/metrics` on `addr` in `ns`, gauge `name` per version.
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &'static str) -> KpiExporter {
        let listener = ns.run(|| TcpListener::bind(addr)).expect("the exporter's listener");
        listener.set_nonblocking(true).expect("non-blocking");
        let values = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (v, s) = (values.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let mut body = format!("# TYPE {name} gauge\n");
                for (version, value) in v.lock().expect("values").iter() {
                    body.push_str(&format!("{name}{{version=\"{version}\"}} {value}\n"));
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        KpiExporter { values, stop, addr }
    }

    /// What the exporter says of `version` from now on.
    pub fn set(&self, version: &str, value: f64) {
        self.values.lock().expect("values").insert(version.to_owned(), value);
    }
}

impl Drop for KpiExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
