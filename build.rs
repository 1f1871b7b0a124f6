//! Generates the report protobuf types from proto/. The binder stubs are
//! the dmabufd-aidl crate's (crates/dmabufd-aidl/build.rs).

fn main() {
    println!("cargo:rerun-if-changed=proto");

    // protox parses the schema in Rust, so no protoc binary is needed to build.
    let fds = protox::compile(["proto/dmabuf_report.proto"], ["proto"]).expect("proto parse");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generation failed");
}
