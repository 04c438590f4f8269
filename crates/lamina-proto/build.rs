//! Generates the gRPC code from the vendored protos with protox (pure Rust, no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/containerd/services/snapshots/v1/snapshots.proto",
        "proto/lamina/v1/layers.proto",
        "proto/lamina/v1/images.proto",
        "proto/lamina/v1/cache.proto",
        "proto/lamina/v1/merge.proto",
        "proto/lamina/v1/index.proto",
        "proto/lamina/v1/lazy.proto",
        "proto/runtime/v1/image.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
