//! Compiles `splitter-ebpf` for bpfel-unknown-none (nightly, bpf-linker) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("splitter-user has no parent directory"))?
        .join("splitter-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    for f in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={root}/{f}");
    }
    println!("cargo:rerun-if-changed=../splitter-common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "splitter-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF object failed; run `cargo xtask bootstrap` to install the nightly \
         rust-src component and bpf-linker",
    )
}
