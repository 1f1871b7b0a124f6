//! Generates the report protobuf types from proto/ and the memtrack HAL's
//! stubs (the service serves it). The vendor.dmabuf binder stubs are the
//! dmabufd-aidl crate's (crates/dmabufd-aidl/build.rs).
use std::path::PathBuf;

/// The `.hash` of the frozen android.hardware.memtrack version 1.
const MEMTRACK_V1_HASH: &str = "25438132a462bf5b6f4334d966c95b70824e66c0";

fn main() {
    println!("cargo:rerun-if-changed=proto");

    // android.hardware.memtrack (v1) for the memtrack HAL the service also
    // serves: its own output file, so the vendor.dmabuf stubs stay as they
    // are. IMemtrack answers getInterfaceVersion/getInterfaceHash with the
    // frozen version 1 and its hash, as a platform-built v1 HAL does.
    let memtrack = PathBuf::from("aidl/android/hardware/memtrack");
    rsbinder_aidl::Builder::new()
        .source(memtrack.join("IMemtrack.aidl"))
        .version(1)
        .hash(MEMTRACK_V1_HASH)
        .source(memtrack.join("MemtrackRecord.aidl"))
        .source(memtrack.join("MemtrackType.aidl"))
        .source(memtrack.join("DeviceInfo.aidl"))
        .output(PathBuf::from("android_hardware_memtrack.rs"))
        .generate()
        .expect("memtrack AIDL generation failed");

    // protox parses the schema in Rust, so no protoc binary is needed to build.
    let fds = protox::compile(["proto/dmabuf_report.proto"], ["proto"]).expect("proto parse");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost generation failed");
}
