//! Generates the binder stubs from aidl/ and the report protobuf types from proto/.
use std::fs;
use std::path::{Path, PathBuf};

/// The version aidl/ is: aidl_api/vendor.dmabuf/<this> holds the same files.
const VERSION: i32 = 2;

/// The `.hash` of the frozen android.hardware.memtrack version 1.
const MEMTRACK_V1_HASH: &str = "25438132a462bf5b6f4334d966c95b70824e66c0";

fn main() {
    println!("cargo:rerun-if-changed=aidl");
    println!("cargo:rerun-if-changed=aidl_api");
    println!("cargo:rerun-if-changed=proto");

    // The service's stubs: aidl/ stamped with the frozen version and hash it
    // matches, so getInterfaceVersion/getInterfaceHash answer like an AOSP
    // HAL's (the platform test checks aidl/ == aidl_api/.../<VERSION>).
    generate(
        Path::new("aidl/vendor/dmabuf"),
        VERSION,
        &format!("aidl_api/vendor.dmabuf/{VERSION}/.hash"),
        "vendor_dmabuf.rs",
    );
    // A client built from the frozen version 1 dump, to prove an old client
    // keeps working against this service (tests/service_rpc.rs).
    generate(
        Path::new("aidl_api/vendor.dmabuf/1/vendor/dmabuf"),
        1,
        "aidl_api/vendor.dmabuf/1/.hash",
        "vendor_dmabuf_v1.rs",
    );

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

/// rsbinder-aidl stamps version and hash on the last file source added, so
/// the interface goes last.
fn generate(dir: &Path, version: i32, hash_file: &str, output: &str) {
    let hash = fs::read_to_string(hash_file).unwrap_or_else(|e| panic!("{hash_file}: {e}"));
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "aidl"))
        .collect();
    files.sort_by_key(|p| p.ends_with("IDmaBufAllocator.aidl"));
    let mut b = rsbinder_aidl::Builder::new();
    for f in files {
        b = b.source(f);
    }
    b.version(version)
        .hash(hash.trim())
        .output(PathBuf::from(output))
        .generate()
        .expect("AIDL generation failed");
}
