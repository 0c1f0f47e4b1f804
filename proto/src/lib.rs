//! Protobuf and gRPC definitions of dedup-ledger, generated from `proto/dedup/v1/*.proto`.
//!
//! `ledger.proto` is the client and admin API; `raft.proto` is the internal peer transport.

/// Package `dedup.v1`.
pub mod v1 {
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("dedup.v1");
}

/// The `google.rpc.ErrorInfo` domain of every error this API returns.
pub const ERROR_DOMAIN: &str = "dedup.v1";

/// The encoded `FileDescriptorSet` of every `dedup.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dedup_descriptor.bin"));
