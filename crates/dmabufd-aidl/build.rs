//! Generates the binder stubs from aidl/ (the current interface) and the
//! frozen version 1 dump under aidl_api/, both at the repository root.
use std::fs;
use std::path::{Path, PathBuf};

/// The version aidl/ is: aidl_api/vendor.dmabuf/<this> holds the same files.
const VERSION: i32 = 2;

fn main() {
    // Paths are relative to the repository root, two levels up.
    std::env::set_current_dir("../..").expect("repository root");
    println!("cargo:rerun-if-changed=../../aidl");
    println!("cargo:rerun-if-changed=../../aidl_api");

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
