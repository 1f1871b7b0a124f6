//! An app that links the client links the client: its normal dependency
//! tree (`cargo tree -e normal`) has no tokio and nothing of the service.

use std::process::Command;

#[test]
fn the_client_depends_on_rsbinder_nix_and_the_stubs_only() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "dmabufd-client",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let packages: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for direct in ["dmabufd-client", "dmabufd-aidl", "rsbinder", "nix"] {
        assert!(packages.contains(&direct), "{direct} missing from:\n{tree}");
    }
    // The runtime and what only the service needs (its crate, the report
    // encoding, BPF, capabilities, the config parser).
    for banned in [
        "tokio", "dmabufd", "prost", "aya", "aya-obj", "caps", "toml", "serde",
    ] {
        assert!(
            !packages.contains(&banned),
            "the client's tree holds {banned}:\n{tree}"
        );
    }
}
