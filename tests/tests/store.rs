//! The CLI against a real etcd on loopback, without agents: reaching the
//! store with a user and password and with TLS client certificates, and
//! clear errors (that never show a secret) when it cannot.

use std::{path::Path, process::Command};

use splitter_tests::{agent::splitter_bin, etcd::Etcd};

fn splitter(args: &[&str], password: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(splitter_bin());
    cmd.env("SPLITTER_LOG", "warn").env_remove("SPLITTER_ETCD_PASSWORD").args(args);
    if let Some(p) = password {
        cmd.env("SPLITTER_ETCD_PASSWORD", p);
    }
    let out = cmd.output().expect("run splitter");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn an_unreachable_store_is_named_and_changes_nothing() {
    let (ok, _, err) = splitter(&["flip", "shop", "--to", "green", "--etcd", "http://127.0.0.1:9"], None);
    assert!(!ok);
    assert!(err.contains("store (etcd at http://127.0.0.1:9) is unreachable"), "{err}");
    let (ok, _, err) = splitter(&["status", "--cluster", "--etcd", "ftp://x"], None);
    assert!(!ok && err.contains("not an etcd client URL"), "{err}");
}

#[test]
fn a_store_with_users_takes_the_password_from_the_environment_and_never_prints_it() {
    let etcd = Etcd::loopback();
    const SECRET: &str = "s3cret-Pa55";
    etcd.ctl(&["user", "add", &format!("root:{SECRET}")]).expect("user add");
    etcd.ctl(&["auth", "enable"]).expect("auth enable");
    let url = etcd.url();
    let (ok, out, err) = splitter(&["status", "--cluster", "--etcd", &url, "--etcd-user", "root"], Some(SECRET));
    assert!(ok, "right password: {err}");
    assert!(out.contains("no desired state yet") && out.contains("0 of 0 nodes"), "{out}");
    let (ok, out, err) = splitter(&["status", "--cluster", "--etcd", &url, "--etcd-user", "root"], Some("wrong"));
    assert!(!ok, "wrong password accepted: {out}");
    assert!(err.contains("refused this client") && err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong") && !err.contains(SECRET), "a password in the error: {err}");
    let (ok, _, err) = splitter(&["status", "--cluster", "--etcd", &url, "--etcd-user", "root"], None);
    assert!(!ok && err.contains("SPLITTER_ETCD_PASSWORD"), "no password: {err}");
    let (ok, _, err) = splitter(&["status", "--cluster", "--etcd", &url], None);
    assert!(!ok && err.contains("refused this client"), "no user at all is refused by etcd: {err}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (Debian's openssl)");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=splitter-test-ca", "-keyout", "ca-key.pem"];
    ca.extend(ec);
    ca.extend(["-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        let mut req = vec!["req", "-new", "-subj"];
        let subj = format!("/CN=splitter-test-{name}");
        req.push(&subj);
        req.extend(["-keyout", &key]);
        req.extend(ec);
        req.extend(["-out", &csr]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ],
        );
    }
}

#[test]
fn a_store_over_tls_needs_the_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let etcd = Etcd::loopback_tls(dir.path());
    let url = etcd.url();
    assert!(url.starts_with("https://"), "{url}");
    let f = |n: &str| dir.path().join(n).display().to_string();
    let (ca, cert, key) = (f("ca.pem"), f("client.pem"), f("client-key.pem"));
    let (ok, out, err) = splitter(
        &["status", "--cluster", "--etcd", &url, "--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key],
        None,
    );
    assert!(ok, "with a client certificate: {err}");
    assert!(out.contains("no desired state yet"), "{out}");
    let (ok, _, err) = splitter(&["status", "--cluster", "--etcd", &url], None);
    assert!(!ok && err.contains("give --etcd-ca"), "https without a CA: {err}");
    let (ok, _, err) = splitter(&["status", "--cluster", "--etcd", &url, "--etcd-ca", &ca], None);
    assert!(!ok && err.contains("unreachable"), "no client certificate: {err}");
}
