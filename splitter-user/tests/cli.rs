//! The `splitter` binary as an operator runs it, for the verbs that need no
//! root: help, check, argument errors.

use std::process::Command;

fn splitter(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitter")).args(args).output().expect("run splitter");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn help_lists_every_verb() {
    let (ok, out, _) = splitter(&["--help"]);
    assert!(ok);
    for verb in ["run", "check", "status", "weight", "flip", "rollback", "mirror", "diffs", "down"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(verb)), "--help lacks {verb}:\n{out}");
    }
}

/// `splitter demo`'s config (it lives in splitter-testkit, next to the
/// topology it names, so it is checked whether or not this build has the demo).
#[test]
fn check_accepts_the_embedded_demo_config() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "demo.yaml", &splitter_testkit::topology::demo_config().to_string());
    let (ok, out, err) = splitter(&["check", "--config", &f]);
    assert!(ok, "demo config rejected: {err}");
    assert!(out.contains("valid, 2 services"), "{out}");
    assert!(out.contains("api  203.0.113.10:8080/tcp l7  blue 90.00%"), "the l7 service too: {out}");
    assert!(
        out.contains("blue 80.00% (1 endpoints), green 20.00% (1 endpoints)"),
        "check shows the resolved split: {out}"
    );
}

#[test]
fn check_rejects_bad_files_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        &dir,
        "bad.yaml",
        "interfaces: {clients: [eth0]}\nservices:\n  shop: {listen: 203.0.113.10:80, protocol: tcp, versions: {blue: [198.51.100.10:8080]}, weights: {green: 5}}\n",
    );
    let (ok, _, err) = splitter(&["check", "--config", &bad]);
    assert!(!ok, "bad config accepted");
    assert!(err.contains("services.shop") && err.contains("\"green\""), "unhelpful error: {err}");

    let (ok, _, err) = splitter(&["check", "--config", "/nonexistent/splitter.yaml"]);
    assert!(!ok);
    assert!(err.contains("cannot read config file /nonexistent/splitter.yaml"), "{err}");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let (ok, _, err) = splitter(&["weight", "shop", "green"]);
    assert!(!ok);
    assert!(err.contains("VERSION=WEIGHT"), "{err}");
    let (ok, _, err) = splitter(&["flip", "shop"]);
    assert!(!ok);
    assert!(err.contains("--to"), "{err}");
    let (ok, _, err) = splitter(&["frobnicate"]);
    assert!(!ok);
    assert!(err.contains("unrecognized subcommand"), "{err}");
}

#[test]
fn runtime_verbs_say_clearly_when_no_agent_listens() {
    let (ok, _, err) = splitter(&["weight", "shop", "green=5", "--socket", "/nonexistent/splitter.sock"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the agent at /nonexistent/splitter.sock"), "{err}");
}
