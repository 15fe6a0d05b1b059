//! A real headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromium-driver`, and the `fantoccini` client. [`Browser::start`] runs
//! chromedriver (which starts Chromium) in the network namespace of the
//! calling thread, so call it (and use the browser) inside
//! `NetNs::run` to reach what listens in that namespace. Dropping it ends
//! the session, then chromedriver, and removes the profile.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// Where Debian puts them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "chromedriver";

pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port of the calling thread's
    /// namespace and opens a headless Chromium session (1280×1600); panics
    /// saying what is missing when either cannot run.
    pub fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} missing: Debian package chromium (`cargo xtask bootstrap` installs it)"
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port for chromedriver");
            l.local_addr().expect("its address").port()
        };
        let profile = tempfile::Builder::new().prefix("splitter-chromium-").tempdir().expect("a profile directory");
        let driver = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {CHROMEDRIVER}: {e} (Debian package chromium-driver: `cargo xtask bootstrap`)")
            });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let mut browser = Browser { rt, client: None, driver, profile };
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Root in a test namespace: Chromium's sandbox refuses root.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1600",
                    format!("--user-data-dir={}", browser.profile.path().display()),
                ],
            }
        });
        let Value::Object(caps) = caps else { unreachable!("an object") };
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen: retry the session, bounded.
        let started = Instant::now();
        let client = loop {
            let attempt =
                browser.rt.block_on(ClientBuilder::new(HttpConnector::new()).capabilities(caps.clone()).connect(&url));
            match attempt {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(20) => {
                    if let Ok(Some(status)) = browser.driver.try_wait() {
                        panic!("chromedriver exited ({status}) before a session started: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("no Chromium session through chromedriver at {url} in 20 s: {e}"),
            }
        };
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session until dropped")
    }

    /// Opens `url` in the window.
    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.client().goto(url)).unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// The value of `script` (a function body: `return ...`) run in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.rt.block_on(self.client().execute(script, Vec::new())).unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Saves a PNG of the window at `path` (creating its directory).
    pub fn screenshot(&self, path: &Path) {
        let png = self.rt.block_on(self.client().screenshot()).expect("a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the session: chromedriver closes Chromium.
            let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
