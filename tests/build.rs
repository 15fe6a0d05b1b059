//! Generates the gRPC echo service of the l7 tests (tonic, prost; needs
//! protoc, which `cargo xtask bootstrap` installs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    tonic_prost_build::compile_protos("proto/echo.proto")?;
    Ok(())
}
