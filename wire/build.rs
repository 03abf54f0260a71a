//! Compiles the SPIFFE Workload API protobuf with protox (pure Rust: no `protoc` needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    #[cfg(feature = "workload-api")]
    compile_workload_api()?;
    Ok(())
}

#[cfg(feature = "workload-api")]
fn compile_workload_api() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
