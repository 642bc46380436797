//! Compiles `proto/baton/v1/*.proto`, and the etcd subset in `proto/etcd/` (the etcd side of
//! `baton bench compare`), with a vendored protoc, so no install step is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // The descriptor set feeds gRPC server reflection (grpcurl without proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("baton_descriptor.bin"))
        // Ordered maps: a spec is validated (and its first error named) the same way on
        // every node and after every round trip, which a HashMap's random order is not.
        .btree_map(".")
        .compile_protos(
            &[
                "proto/baton/v1/types.proto",
                "proto/baton/v1/coordinator.proto",
                "proto/baton/v1/admin.proto",
                "proto/baton/v1/raft.proto",
            ],
            &["proto"],
        )?;
    // etcd's API, client side only: baton only calls etcd, in `bench::etcd`.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/etcd/rpc.proto"], &["proto/etcd"])?;
    Ok(())
}
