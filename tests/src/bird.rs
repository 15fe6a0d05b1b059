//! A real BIRD 2 (Debian's `bird2`) in a test namespace: started in the
//! foreground on a config the test gives, with its own control socket for
//! `birdc`, and killed when dropped.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use splitter_testkit::netns::NetNs;

pub struct Bird {
    child: Child,
    dir: tempfile::TempDir,
}

impl Bird {
    /// Starts `bird -f` in `ns` on `config`; panics (with BIRD's words)
    /// when it refuses the config or does not answer on its socket in 10 s.
    pub fn start(ns: &NetNs, config: &str) -> Bird {
        let dir = tempfile::Builder::new().prefix("splitter-bird-").tempdir().expect("a directory for BIRD");
        let conf = dir.path().join("bird.conf");
        std::fs::write(&conf, config).expect("writing bird.conf");
        let socket = dir.path().join("bird.ctl");
        let child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.path().join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting bird: {e} (Debian package bird2: `cargo xtask bootstrap`)"));
        let mut bird = Bird { child, dir };
        let started = Instant::now();
        while bird.birdc(&["show", "status"]).is_none() {
            if let Ok(Some(status)) = bird.child.try_wait() {
                let mut why = String::new();
                if let Some(mut e) = bird.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut why);
                }
                panic!("bird exited ({status}) on this config: {why}\n{config}");
            }
            assert!(started.elapsed() < Duration::from_secs(10), "bird did not answer on its socket in 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        bird
    }

    /// `birdc ARGS` on this BIRD's socket (`None` when it does not answer).
    pub fn birdc(&self, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(self.dir.path().join("bird.ctl"))
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
