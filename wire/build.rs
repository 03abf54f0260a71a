//! Compiles sigil's protobufs with protox (pure Rust: no `protoc` needed): the SPIFFE Workload API
//! (no package: `OUT_DIR/_.rs`) and sigil's admin API (`OUT_DIR/sigil.admin.v1.rs`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    println!("cargo:rerun-if-changed=proto/admin.proto");
    #[cfg(feature = "workload-api")]
    compile_protos()?;
    Ok(())
}

#[cfg(feature = "workload-api")]
fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/workload.proto", "proto/admin.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
