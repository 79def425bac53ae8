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
    println!("wrote {}", out.display());
}
