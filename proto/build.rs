//! Generates the gRPC code from `dedup/v1/*.proto` with protox, a pure-Rust protobuf compiler,
//! so that a fresh machine needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["dedup/v1/ledger.proto", "dedup/v1/raft.proto"];
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=dedup");
    Ok(())
}
