//! Rebuild the kernel object when bpf-linker changes (a new LLVM means new code).
use which::which;

fn main() {
    // Not finding bpf-linker is not an error here: this build script also runs
    // when the host builds the (empty) library target. The real bpf build fails
    // loudly in the linker step if it is missing.
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
