//! The Debian package `cargo xtask package` builds (`cargo xtask test`
//! builds it before the tests): its files, its systemd unit verified by
//! `systemd-analyze verify`, its default config passing `splitter check`,
//! completions and man pages that list every command, and a clean install
//! and removal with dpkg on this machine. (The unit is not started: systemd
//! is not PID 1 here.)

use std::{path::PathBuf, process::Command};

use clap::CommandFactory as _;
use splitter_user::cli::Cli;

/// The package in target/package; fails loudly without one.
fn deb() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/package");
    let found = std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok().map(|e| e.path())).find(|p| p.extension().is_some_and(|x| x == "deb")));
    found.unwrap_or_else(|| {
        panic!(
            "no .deb in {}: run `cargo xtask package` (`cargo xtask test` builds it first). Refusing to skip.",
            dir.display()
        )
    })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The commands a user sees (`--help`), by name.
fn commands() -> Vec<String> {
    Cli::command().get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name().to_owned()).collect()
}

/// Removes the package (purged) when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "splitter"]).output();
    }
}

#[test]
fn the_package_holds_the_agent_its_unit_config_completions_and_man_pages_and_installs_cleanly() {
    splitter_tests::require_root("installing the package with dpkg");
    let deb = deb();
    let (ok, listing) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(ok, "{listing}");
    let mut expected: Vec<String> = [
        "./usr/bin/splitter",
        "./lib/systemd/system/splitter.service",
        "./etc/splitter/splitter.yaml",
        "./usr/share/bash-completion/completions/splitter",
        "./usr/share/zsh/vendor-completions/_splitter",
        "./usr/share/fish/vendor_completions.d/splitter.fish",
        "./usr/share/man/man1/splitter.1.gz",
        "./usr/share/splitter/grafana-dashboard.json",
    ]
    .map(str::to_owned)
    .into();
    expected.extend(commands().iter().map(|c| format!("./usr/share/man/man1/splitter-{c}.1.gz")));
    for path in &expected {
        assert!(listing.lines().any(|l| l.ends_with(path.as_str())), "{path} not in the package:\n{listing}");
    }
    let (_, fields) = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(fields.contains("Package: splitter") && fields.contains("Depends: libc6"), "{fields}");
    let (_, conffiles) = run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/splitter/splitter.yaml", "the config is a conffile");

    // Install it (a leftover from an earlier run is purged first).
    let _ = Command::new("dpkg").args(["--purge", "splitter"]).output();
    let (ok, out) = run(Command::new("dpkg").arg("--install").arg(&deb));
    let installed = Installed;
    assert!(ok, "dpkg --install: {out}");
    let (ok, version) = run(Command::new("/usr/bin/splitter").arg("--version"));
    assert!(ok && version.starts_with("splitter "), "{version}");
    // The unit passes systemd's own check, with the binary it names in place.
    let (ok, verify) = run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/splitter.service"]));
    assert!(ok, "systemd-analyze verify: {verify}");
    let unit = std::fs::read_to_string("/lib/systemd/system/splitter.service").unwrap();
    for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=splitter", "NoNewPrivileges=yes"]
    {
        assert!(unit.lines().any(|l| l == line), "{line} not in the unit:\n{unit}");
    }
    // The default config is valid as installed.
    let (ok, check) = run(Command::new("/usr/bin/splitter").args(["check", "--config", "/etc/splitter/splitter.yaml"]));
    assert!(ok, "the packaged config: {check}");
    // Completions and man pages name every command.
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/splitter").unwrap();
    let man = String::from_utf8(
        Command::new("gzip").args(["-dc", "/usr/share/man/man1/splitter.1.gz"]).output().unwrap().stdout,
    )
    .unwrap();
    for c in commands() {
        assert!(bash.contains(&format!("splitter,{c})")) || bash.contains(&format!(" {c} ")), "bash: no {c}");
        assert!(man.contains(&format!("splitter\\-{c}")), "splitter.1 does not list {c}:\n{man}");
    }

    // Removed: the program, the unit and the rest go; the edited config
    // stays until a purge (a conffile).
    let (ok, out) = run(Command::new("dpkg").args(["--remove", "splitter"]));
    assert!(ok, "dpkg --remove: {out}");
    for gone in ["/usr/bin/splitter", "/lib/systemd/system/splitter.service", "/usr/share/man/man1/splitter.1.gz"] {
        assert!(!std::path::Path::new(gone).exists(), "{gone} left after dpkg --remove");
    }
    assert!(std::path::Path::new("/etc/splitter/splitter.yaml").exists(), "a conffile stays until purged");
    let (ok, out) = run(Command::new("dpkg").args(["--purge", "splitter"]));
    assert!(ok, "dpkg --purge: {out}");
    assert!(!std::path::Path::new("/etc/splitter/splitter.yaml").exists(), "purged");
    drop(installed);
}
