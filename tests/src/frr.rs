//! A real FRR (Debian's `frr`: zebra and bgpd) in a test namespace, on a
//! bgpd config the test gives, with its own directory for the zebra socket,
//! the vty sockets and the logs; both daemons killed when dropped. They run
//! as FRR's own user (`frr`), as the package runs them: FRR refuses root
//! outside its `frrvty` group.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use splitter_testkit::netns::NetNs;

const DAEMONS: &str = "/usr/lib/frr";

pub struct Frr {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Frr {
    /// Starts zebra and bgpd (on `bgpd_conf`) in `ns`; panics with their
    /// logs when bgpd does not answer on its vty socket in 10 s.
    pub fn start(ns: &NetNs, bgpd_conf: &str) -> Frr {
        let dir = tempfile::Builder::new().prefix("splitter-frr-").tempdir().expect("a directory for FRR");
        // The daemons drop to the frr user: it writes its sockets and logs here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let root = dir.path().to_owned();
        let p = |name: &str| root.join(name);
        std::fs::write(p("zebra.conf"), "hostname zebra\n").expect("zebra.conf");
        std::fs::write(p("bgpd.conf"), bgpd_conf).expect("bgpd.conf");
        let daemon = |name: &str| -> Child {
            ns.command(Path::new(DAEMONS).join(name))
                .arg("-f")
                .arg(p(&format!("{name}.conf")))
                .arg("-i")
                .arg(p(&format!("{name}.pid")))
                .arg("-z")
                .arg(p("zserv.api"))
                .arg("--vty_socket")
                .arg(&root)
                .arg("--log")
                .arg(format!("file:{}", p(&format!("{name}.log")).display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e} (Debian package frr: `cargo xtask bootstrap`)"))
        };
        let zebra = daemon("zebra");
        let mut frr = Frr { children: vec![zebra], dir };
        frr.wait_for("zserv.api");
        let bgpd = daemon("bgpd");
        frr.children.push(bgpd);
        frr.wait_for("bgpd.vty");
        frr
    }

    fn wait_for(&mut self, socket: &str) {
        let started = Instant::now();
        while !self.dir.path().join(socket).exists() {
            for c in &mut self.children {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("an FRR daemon exited ({status}):\n{}", self.logs());
                }
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no {socket} in 10 s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything zebra and bgpd logged.
    pub fn logs(&self) -> String {
        ["zebra.log", "bgpd.log"]
            .iter()
            .map(|l| format!("{l}:\n{}", std::fs::read_to_string(self.dir.path().join(l)).unwrap_or_default()))
            .collect()
    }

    /// The directory of its sockets (for `vtysh --vty_socket`).
    pub fn vty_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
