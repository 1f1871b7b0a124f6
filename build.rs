//! Generates the binder stubs from aidl/ and the report protobuf types from proto/.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=aidl");
    println!("cargo:rerun-if-changed=proto");

    rsbinder_aidl::Builder::new()
        .source(PathBuf::from("aidl/vendor/dmabuf"))
        .output(PathBuf::from("vendor_dmabuf.rs"))
        .generate()
        .expect("AIDL generation failed");

    // protox parses the schema in Rust, so no protoc binary is needed to build.
    let fds = protox::compile(["proto/dmabuf_report.proto"], ["proto"]).expect("proto parse");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generation failed");
}
