//! Generates the etcd v3 gRPC client code (KV, Lease, Watch and their messages) that
//! `ved-cluster` checks in under `src/pb/`, using the protoc binary that the
//! `protoc-bin-vendored` crate ships, so no system protoc is needed even here.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc for this platform");
    // SAFETY: single-threaded, before anything reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = root.join("src/pb");
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&out)
        .compile_protos(&[root.join("proto/etcd/api/etcdserverpb/rpc.proto")], &[root.join("proto")])
        .expect("protoc ran");
    // Options of the HTTP gateway and its OpenAPI output, which the client does not use.
    for unused in ["google.api.rs", "grpc.gateway.protoc_gen_openapiv2.options.rs"] {
        let _ = std::fs::remove_file(out.join(unused));
    }
    println!("wrote {}", out.display());
}
