//! include/dmabufd.h is what cbindgen makes of src/lib.rs now. Run with
//! DMABUFD_BLESS=1 to rewrite it after changing the API.

use std::path::Path;

#[test]
fn the_checked_in_header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = dir.join("include/dmabufd.h");
    if std::env::var_os("DMABUFD_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is out of date with src/lib.rs: run \
         DMABUFD_BLESS=1 cargo test -p dmabufd-capi --test header\n--- generated:\n{generated}",
        path.display()
    );
}
