//! Compiles `splitter-ebpf` for bpfel-unknown-none (nightly, bpf-linker) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! Every profile and feature set of splitter-user has its own OUT_DIR, but
//! the eBPF object is the same for all of them (always a release build of
//! the same crate): it is built once in `target/ebpf-shared`, under a file
//! lock (cargo may run two of these scripts at once), and copied from there.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};

/// The object's file name, as aya-build leaves it.
const OBJECT: &str = "splitter-ebpf";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("splitter-user has no parent directory"))?
        .join("splitter-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    for f in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={root}/{f}");
    }
    println!("cargo:rerun-if-changed=../splitter-common/src");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    // OUT_DIR is TARGET/PROFILE/build/splitter-user-HASH/out.
    let target = out_dir.ancestors().nth(4).ok_or_else(|| anyhow!("unexpected OUT_DIR {}", out_dir.display()))?;
    let shared = target.join("ebpf-shared");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    let lock = std::fs::File::create(shared.join(".lock")).context("creating the eBPF build lock")?;
    lock.lock().context("locking the eBPF build")?;
    // aya-build builds into and copies to OUT_DIR: point it at the shared one.
    std::env::set_var("OUT_DIR", &shared);
    aya_build::build_ebpf(
        [aya_build::Package { name: "splitter-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF object failed; run `cargo xtask bootstrap` to install the nightly \
         rust-src component and bpf-linker",
    )?;
    std::fs::copy(shared.join(OBJECT), out_dir.join(OBJECT))
        .with_context(|| format!("copying the eBPF object to {}", out_dir.display()))?;
    Ok(())
}
