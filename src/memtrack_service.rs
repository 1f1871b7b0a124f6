//! The memtrack HAL's binder adapter: `IMemtrack` over [`crate::memtrack`],
//! registered as `android.hardware.memtrack.IMemtrack/default` next to the
//! allocator (a second service object in the same process). Errors map to
//! binder statuses in `crate::error::into_status`, as for the allocator.

use std::sync::Arc;

use rsbinder::{BinderResult, Interface, SIBinder};

use crate::error::into_status;
use crate::memtrack::Memtrack;
use crate::memtrack_aidl::android::hardware::memtrack::{
    DeviceInfo::DeviceInfo,
    IMemtrack::{BnMemtrack, IMemtrack},
    MemtrackRecord::MemtrackRecord,
    MemtrackType::MemtrackType,
};

/// Cheap to clone.
#[derive(Clone)]
pub struct MemtrackService {
    memtrack: Arc<Memtrack>,
}

impl MemtrackService {
    pub fn new(memtrack: Arc<Memtrack>) -> MemtrackService {
        MemtrackService { memtrack }
    }

    /// The binder object to register.
    pub fn binder(self) -> SIBinder {
        BnMemtrack::new_binder(self).as_binder()
    }
}

impl Interface for MemtrackService {}

impl IMemtrack for MemtrackService {
    fn getMemory(&self, pid: i32, t: MemtrackType) -> BinderResult<Vec<MemtrackRecord>> {
        let c = crate::service::caller();
        self.memtrack
            .get_memory(c, pid, t.0)
            .map(|records| {
                records
                    .into_iter()
                    .map(|r| MemtrackRecord {
                        flags: r.flags,
                        sizeInBytes: r.size.min(i64::MAX as u64) as i64,
                    })
                    .collect()
            })
            .map_err(|e| into_status(e, "IMemtrack.getMemory", c.uid, c.pid))
    }

    fn getGpuDeviceInfo(&self) -> BinderResult<Vec<DeviceInfo>> {
        Ok(self
            .memtrack
            .gpu_device_info()
            .into_iter()
            .map(|d| DeviceInfo {
                id: d.id,
                name: d.name,
            })
            .collect())
    }
}
