//! An app that links the client links the client: its normal dependency
//! tree (`cargo tree -e normal`) has no tokio and nothing of the service.

use std::process::Command;

/// The package names in `package`'s normal dependency tree.
fn tree(package: &str) -> (Vec<String>, String) {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let packages = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    (packages, tree)
}

#[test]
fn the_client_depends_on_rsbinder_nix_and_the_stubs_only() {
    let (packages, tree) = tree("dmabufd-client");
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
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

/// The CLI is a client like any app: the client crate and a JSON printer,
/// nothing of the service.
#[test]
fn the_cli_links_the_client_and_nothing_of_the_service() {
    let (packages, tree) = tree("dmabufctl");
    let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
    assert!(packages.contains(&"dmabufd-client"), "{tree}");
    for banned in [
        "tokio", "dmabufd", "prost", "aya", "aya-obj", "caps", "toml",
    ] {
        assert!(
            !packages.contains(&banned),
            "the CLI's tree holds {banned}:\n{tree}"
        );
    }
}
