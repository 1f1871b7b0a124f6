//! dmabufd: a DMA-BUF allocator HAL service over binder, with per-buffer
//! accounting (owner, heap, size, name) and per-process memory reports.

/// Stubs generated from aidl/vendor/dmabuf (crates/dmabufd-aidl).
pub use dmabufd_aidl as aidl;
/// The client library (crates/dmabufd-client).
pub use dmabufd_client as client;

pub mod memtrack_aidl {
    //! Stubs generated from aidl/android/hardware/memtrack (IMemtrack v1).
    #![allow(clippy::all, non_snake_case, non_camel_case_types, unused)]
    rsbinder::include_aidl!("android_hardware_memtrack");
}

pub mod proto {
    //! Protobuf types of the `dump --proto` report (proto/dmabuf_report.proto).
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/dmabufd.report.rs"));
}

/// The instance name registered with the service manager (and the RPC name).
pub use dmabufd_client::{service_name, SERVICE_NAME};

/// The memtrack HAL instance the service also serves (when enabled).
pub const MEMTRACK_SERVICE_NAME: &str = "android.hardware.memtrack.IMemtrack/default";

pub mod accounting;
pub mod allocator;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod error;
pub mod heap;
pub mod journal;
pub mod logging;
pub mod memtrack;
pub mod memtrack_service;
pub mod metrics;
pub mod monitor;
pub mod pool;
pub mod pressure;
pub mod privileges;
pub mod procfs;
pub mod registry;
pub mod report;
pub mod rpc_gate;
pub mod scan;
pub mod sd_notify;
pub mod service;
pub mod sys;
pub mod trace;
pub mod transport;
