//! `cargo xtask package`: the agent as a Debian package, built with
//! dpkg-deb from the release binary, the systemd unit, default config and
//! Grafana dashboard in `packaging/`, and the shell completions and man
//! pages the binary generates from its own CLI definition. Written to
//! `target/package/splitter_VERSION_ARCH.deb`.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, workspace_root};

/// Where the package is written.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target/package")
}

fn run_capture(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn put(tree: &Path, at: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = tree.join(at.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds the package; returns its path.
pub fn run() -> Result<PathBuf> {
    cargo(&["build", "--release", "--package", "splitter-user", "--bin", "splitter"])?;
    let root = workspace_root();
    let bin = root.join("target/release/splitter");
    let version_line = String::from_utf8(run_capture(Command::new(&bin).arg("--version"))?)?;
    let version = version_line.split_whitespace().nth(1).context("`splitter --version` gave no version")?.to_owned();
    let arch = String::from_utf8(run_capture(Command::new("dpkg").arg("--print-architecture"))?)?.trim().to_owned();

    let out = out_dir();
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let tree = out.join("tree");
    put(&tree, "/usr/bin/splitter", &std::fs::read(&bin)?, 0o755)?;
    let packaging = root.join("packaging");
    put(&tree, "/lib/systemd/system/splitter.service", &std::fs::read(packaging.join("splitter.service"))?, 0o644)?;
    put(&tree, "/etc/splitter/splitter.yaml", &std::fs::read(packaging.join("splitter.yaml"))?, 0o644)?;
    for (shell, at) in [
        ("bash", "/usr/share/bash-completion/completions/splitter"),
        ("zsh", "/usr/share/zsh/vendor-completions/_splitter"),
        ("fish", "/usr/share/fish/vendor_completions.d/splitter.fish"),
    ] {
        put(&tree, at, &run_capture(Command::new(&bin).args(["completions", shell]))?, 0o644)?;
    }
    let man = out.join("man");
    run_capture(Command::new(&bin).arg("manpages").arg(&man))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    for page in &pages {
        // -n: no name or time stamp in the archive, so a rebuild is the same.
        let gz = run_capture(Command::new("gzip").args(["-9n", "--stdout"]).arg(page))?;
        let name = page.file_name().and_then(|n| n.to_str()).context("a man page's name")?;
        put(&tree, &format!("/usr/share/man/man1/{name}.gz"), &gz, 0o644)?;
    }
    put(&tree, "/usr/share/doc/splitter/README.md", &std::fs::read(root.join("README.md"))?, 0o644)?;
    // For Grafana to import (Dashboards > Import).
    let grafana = std::fs::read(packaging.join("grafana-dashboard.json"))?;
    put(&tree, "/usr/share/splitter/grafana-dashboard.json", &grafana, 0o644)?;
    put(
        &tree,
        "/usr/share/doc/splitter/copyright",
        b"splitter: an eBPF/XDP-accelerated L4/L7 traffic splitter.\nLicense: see the project's Cargo.toml (license field).\n",
        0o644,
    )?;

    let installed_kib = dir_size(&tree)?.div_ceil(1024);
    let control = format!(
        "Package: splitter\nVersion: {version}\nArchitecture: {arch}\nMaintainer: splitter developers <splitter@localhost>\n\
         Section: net\nPriority: optional\nDepends: libc6\nInstalled-Size: {installed_kib}\n\
         Description: eBPF/XDP-accelerated L4/L7 traffic splitter for progressive delivery\n \
         An agent that splits new connections between versions of a service by weight\n \
         in an XDP program, proxies HTTP for header-based canaries and mirroring, and\n \
         runs rollouts judged on its own metrics and Prometheus queries.\n"
    );
    put(&tree, "/DEBIAN/control", control.as_bytes(), 0o644)?;
    put(&tree, "/DEBIAN/conffiles", b"/etc/splitter/splitter.yaml\n", 0o644)?;
    // The unit is installed, not enabled: edit the config first, then
    // `systemctl enable --now splitter` (it attaches XDP to your interfaces).
    let reload = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    put(&tree, "/DEBIAN/postinst", reload.as_bytes(), 0o755)?;
    put(&tree, "/DEBIAN/postrm", reload.as_bytes(), 0o755)?;
    // Removing the package stops the agent (the pinned data path stays:
    // `splitter down` removes it).
    let stop = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then systemctl stop splitter.service || true; fi\n";
    put(&tree, "/DEBIAN/prerm", stop.as_bytes(), 0o755)?;

    let deb = out.join(format!("splitter_{version}_{arch}.deb"));
    run_capture(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&deb))?;
    let listing = String::from_utf8(run_capture(Command::new("dpkg-deb").arg("--contents").arg(&deb))?)?;
    eprintln!("xtask: built {}:\n{listing}", deb.display());
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}
