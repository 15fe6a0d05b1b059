//! A real etcd (Debian's `etcd-server`) for the shared-store tests: one
//! member with its own data directory, listening on loopback or on an
//! address in a test namespace; stopped and started again on the same data,
//! killed and removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use splitter_testkit::{
    netns::{unique_name, NetNs},
    wait::wait_until_every,
};

pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Namespace file to run in (none: this process's namespace).
    ns: Option<PathBuf>,
    host: String,
    port: u16,
    peer_port: u16,
    name: String,
    scheme: &'static str,
    /// Extra `etcd` arguments (TLS) and the `etcdctl` ones that go with them.
    extra: Vec<String>,
    ctl_extra: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

impl Etcd {
    /// etcd on loopback, on free ports.
    pub fn loopback() -> Etcd {
        Self::start(None, "127.0.0.1", free_port(), free_port())
    }

    /// etcd on loopback serving clients over TLS: `certs` holds `ca.pem`,
    /// `server.pem`/`server-key.pem` (for 127.0.0.1) and
    /// `client.pem`/`client-key.pem`; client certificates are required.
    pub fn loopback_tls(certs: &std::path::Path) -> Etcd {
        let f = |n: &str| certs.join(n).display().to_string();
        let name = unique_name("etcd");
        let dir = std::env::temp_dir().join(format!("splitter-test-{name}"));
        let extra = vec![
            "--cert-file".into(),
            f("server.pem"),
            "--key-file".into(),
            f("server-key.pem"),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            f("ca.pem"),
        ];
        let ctl_extra = vec![
            format!("--cacert={}", f("ca.pem")),
            format!("--cert={}", f("client.pem")),
            format!("--key={}", f("client-key.pem")),
        ];
        let mut e = Etcd {
            child: None,
            dir,
            ns: None,
            host: "127.0.0.1".into(),
            port: free_port(),
            peer_port: free_port(),
            name,
            scheme: "https",
            extra,
            ctl_extra,
        };
        e.start_again();
        e
    }

    /// etcd in `ns`, listening on `host` (an address of `ns`) port 2379.
    pub fn in_namespace(ns: &NetNs, host: &str) -> Etcd {
        Self::start(Some(ns.path()), host, 2379, 2380)
    }

    fn start(ns: Option<PathBuf>, host: &str, port: u16, peer_port: u16) -> Etcd {
        let name = unique_name("etcd");
        let dir = std::env::temp_dir().join(format!("splitter-test-{name}"));
        let mut e = Etcd {
            child: None,
            dir,
            ns,
            host: host.into(),
            port,
            peer_port,
            name,
            scheme: "http",
            extra: Vec::new(),
            ctl_extra: Vec::new(),
        };
        e.start_again();
        e
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }

    /// Starts the (stopped) member again on the same data; returns once it
    /// answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let mut cmd = self.command("etcd");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        cmd.args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{}={peer}", self.name), "--log-level", "error"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::fs::create_dir_all(&self.dir).expect("etcd test dir");
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("starting etcd: {e}")));
        let what = format!("etcd to answer at {}", self.url());
        let (healthy, exited) = wait_until_every(
            &what,
            Duration::from_secs(20),
            Duration::from_millis(100),
            || (self.healthy(), self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())),
            |(healthy, exited)| *healthy || exited.is_some(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if let (false, Some(status)) = (healthy, exited) {
            panic!("etcd exited ({status}) before it answered at {}", self.url());
        }
    }

    /// `etcdctl ARGS` against this member (in its namespace); its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "--command-timeout=2s"])
            .args(&self.ctl_extra)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `bin` (etcd or etcdctl) in this member's namespace.
    fn command(&self, bin: &str) -> Command {
        let bin = which_etcd(bin);
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }

    fn healthy(&self) -> bool {
        self.ctl(&["endpoint", "health"]).is_ok()
    }

    /// Stops the member (SIGKILL: as abrupt as a crash or a partition).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn which_etcd(bin: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(bin);
    assert!(
        path.exists(),
        "{} is not installed: the shared-store tests need Debian's etcd-server and etcd-client (`cargo xtask bootstrap` installs them)",
        path.display()
    );
    path
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
