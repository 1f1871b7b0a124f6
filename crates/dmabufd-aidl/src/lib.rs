//! Stubs generated from aidl/vendor/dmabuf (the current interface, frozen
//! as version 2 with its hash) at the crate root, and from the frozen
//! version 1 dump in [`v1`]; nothing else lives here.
#![allow(clippy::all, non_snake_case, non_camel_case_types, unused)]

rsbinder::include_aidl!("vendor_dmabuf");

/// The frozen version 1 interface (aidl_api/vendor.dmabuf/1), as a client
/// shipped against version 1 has it: for compatibility tests.
pub mod v1 {
    rsbinder::include_aidl!("vendor_dmabuf_v1");
}
