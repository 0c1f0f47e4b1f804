//! Generates the gRPC code from `dedup/v1/*.proto` with protox, a pure-Rust protobuf compiler,
//! so that a fresh machine needs no `protoc` binary. Also writes the encoded descriptor set,
//! which dedupd serves through gRPC reflection.

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["dedup/v1/ledger.proto", "dedup/v1/raft.proto"];
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("dedup_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=dedup");
    Ok(())
}
