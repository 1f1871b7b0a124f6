//! The README's Rust example is examples/allocate.rs, which the test suite
//! compiles (`cargo test --all-targets` builds examples): the two are kept
//! identical here.

#[test]
fn the_readme_rust_example_is_the_compiled_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(dir.join("../../README.md")).unwrap();
    let example = std::fs::read_to_string(dir.join("examples/allocate.rs")).unwrap();
    let start = readme
        .find("```rust\n//! Allocate a named buffer")
        .expect("README has the Rust client example")
        + "```rust\n".len();
    let len = readme[start..].find("```\n").unwrap();
    assert_eq!(
        &readme[start..start + len],
        example,
        "README's Rust example differs from crates/dmabufd-client/examples/allocate.rs"
    );
}
