//! The memtrack HAL's figures (`android.hardware.memtrack.IMemtrack` v1),
//! drawn from the one accounting (`crate::accounting`, kept by
//! `crate::monitor`); `crate::memtrack_service` is the binder adapter.
//!
//! What each type reports for a pid > 0:
//! - **GRAPHICS**: the process's DMA-BUF pss (the interface's own
//!   definition: every dma-buf it holds an fd or a mapping of, each divided
//!   by the processes referencing it), except buffers classed CAMERA or
//!   MULTIMEDIA. Two records, both `FLAG_SMAPS_UNACCOUNTED` (the system heap
//!   maps with remap_pfn_range, so smaps never shows these pages):
//!   `FLAG_SHARED_PSS` (buffers other processes reference too, their pss)
//!   and `FLAG_PRIVATE` (buffers only this process references, full size).
//!   Their sum is the process's pss of those buffers; no record gives the
//!   full size of shared buffers (`FLAG_SHARED`), because callers that sum
//!   every record would count shared buffers twice.
//! - **CAMERA** / **MULTIMEDIA**: the same two records over the buffers of
//!   that class: those allocated through dmabufd under a heap or alias name
//!   listed in `[memtrack] camera` / `multimedia` (defaults `camera` and
//!   `multimedia`), and buffers of other exporters whose exporter name is
//!   listed. Types never overlap: each buffer is in exactly one class, and
//!   GRAPHICS + CAMERA + MULTIMEDIA add up to the process's DMA-BUF pss.
//! - **GL**: GPU-private memory. dmabufd knows none (it is not a GPU
//!   driver): no records.
//! - **OTHER**: nothing dmabufd classes as OTHER: no records.
//!
//! pid 0: GL is the system-wide GPU-private total (none known: no records);
//! every other type reports 0 (the two records with size 0). A pid with no
//! process (it may have just exited) reports 0 too. A negative pid is
//! `Kind::IllegalArgument` (EX_ILLEGAL_ARGUMENT) whatever the type; a type
//! outside 0..=4 is `Kind::Unsupported` (EX_UNSUPPORTED_OPERATION).
//!
//! Only dma-bufs count: buffers of the memfd heap are shmem, which smaps
//! already shows where mapped.
//!
//! The class of a buffer allocated under an alias comes from the alias the
//! client asked for, which the registry does not keep (it records the heap
//! that served it): [`Classes`] remembers it per buffer while the buffer
//! lives. After a restart of the service those buffers are classed by
//! their heap name.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::accounting::Accounting;
use crate::allocator::Caller;
use crate::config::{Config, MemtrackConfig};
use crate::error::{Error, Kind, Result};
use crate::monitor::Monitor;
use crate::registry::BufferRecord;
use crate::scan::{BufferKey, BufferKind};

pub const FLAG_SMAPS_ACCOUNTED: i32 = 1 << 1;
pub const FLAG_SMAPS_UNACCOUNTED: i32 = 1 << 2;
pub const FLAG_SHARED: i32 = 1 << 3;
pub const FLAG_SHARED_PSS: i32 = 1 << 4;
pub const FLAG_PRIVATE: i32 = 1 << 5;
pub const FLAG_SYSTEM: i32 = 1 << 6;
pub const FLAG_DEDICATED: i32 = 1 << 7;
pub const FLAG_NONSECURE: i32 = 1 << 8;
pub const FLAG_SECURE: i32 = 1 << 9;

/// Where the kernel lists DRM devices (GPUs): `card<N>` entries.
pub const DRM_CLASS_DIR: &str = "/sys/class/drm";

/// `MemtrackType`, with the values of the AIDL enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemType {
    Other = 0,
    Gl = 1,
    Graphics = 2,
    Multimedia = 3,
    Camera = 4,
}

impl MemType {
    pub const ALL: [MemType; 5] = [
        MemType::Other,
        MemType::Gl,
        MemType::Graphics,
        MemType::Multimedia,
        MemType::Camera,
    ];

    pub fn from_raw(v: i32) -> Option<MemType> {
        MemType::ALL.into_iter().find(|t| *t as i32 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            MemType::Other => "OTHER",
            MemType::Gl => "GL",
            MemType::Graphics => "GRAPHICS",
            MemType::Multimedia => "MULTIMEDIA",
            MemType::Camera => "CAMERA",
        }
    }
}

/// One `MemtrackRecord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub flags: i32,
    pub size: u64,
}

/// Validates `getMemory(pid, type)`'s arguments, pid first (a negative pid
/// is refused whatever the type).
pub fn check_request(pid: i32, raw_type: i32) -> Result<MemType> {
    if pid < 0 {
        return Err(Error::new(
            Kind::IllegalArgument,
            format!(
                "getMemory({pid}, {raw_type}): pid {pid} is not a process id; pass a pid > 0, \
                 or 0 for the system-wide figure"
            ),
        ));
    }
    MemType::from_raw(raw_type).ok_or_else(|| {
        let allowed: Vec<String> = MemType::ALL
            .iter()
            .map(|t| format!("{} ({})", t.name(), *t as i32))
            .collect();
        Error::new(
            Kind::Unsupported,
            format!(
                "getMemory({pid}, {raw_type}): type {raw_type} is not a MemtrackType; supported: {}",
                allowed.join(", ")
            ),
        )
    })
}

/// Which buffers are CAMERA or MULTIMEDIA (everything else is GRAPHICS).
pub struct Classes {
    camera: BTreeSet<String>,
    multimedia: BTreeSet<String>,
    /// Buffers allocated through dmabufd under a name of a class (only the
    /// non-GRAPHICS ones are kept), until they are freed.
    allocated: Mutex<HashMap<BufferKey, MemType>>,
}

impl Classes {
    pub fn new(config: &MemtrackConfig) -> Classes {
        Classes {
            camera: config.camera.iter().cloned().collect(),
            multimedia: config.multimedia.iter().cloned().collect(),
            allocated: Mutex::new(HashMap::new()),
        }
    }

    /// The class of a heap, alias or exporter name.
    pub fn class_of_name(&self, name: &str) -> MemType {
        if self.camera.contains(name) {
            MemType::Camera
        } else if self.multimedia.contains(name) {
            MemType::Multimedia
        } else {
            MemType::Graphics
        }
    }

    /// Remembers the class of a buffer allocated through dmabufd under
    /// `requested` (the heap or alias the client named).
    pub fn note_allocation(&self, key: BufferKey, requested: &str) {
        let class = self.class_of_name(requested);
        if class != MemType::Graphics {
            self.lock().insert(key, class);
        }
    }

    /// Forgets freed buffers (the monitor reports them).
    pub fn forget(&self, freed: &[BufferRecord]) {
        let mut map = self.lock();
        for r in freed {
            map.remove(&r.key());
        }
    }

    /// The class of one buffer: the name it was allocated under, else its
    /// exporter (the heap for dmabufd's buffers, fdinfo's exp_name else).
    pub fn class_of(&self, key: BufferKey, exporter: &str) -> MemType {
        match self.lock().get(&key) {
            Some(c) => *c,
            None => self.class_of_name(exporter),
        }
    }

    /// How many buffers are remembered (tests).
    pub fn remembered(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BufferKey, MemType>> {
        self.allocated.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The two records of a DMA-BUF class: shared (pss) and private.
fn split_records(shared_pss: u64, private: u64) -> Vec<Record> {
    vec![
        Record {
            flags: FLAG_SMAPS_UNACCOUNTED | FLAG_SHARED_PSS,
            size: shared_pss,
        },
        Record {
            flags: FLAG_SMAPS_UNACCOUNTED | FLAG_PRIVATE,
            size: private,
        },
    ]
}

/// The answers that need no scan: GL and OTHER (nothing known), and pid 0
/// (the system-wide GL total, none known; 0 for every other type).
pub fn fixed_records(pid: i32, t: MemType) -> Option<Vec<Record>> {
    match t {
        MemType::Gl | MemType::Other => Some(Vec::new()),
        _ if pid == 0 => Some(split_records(0, 0)),
        _ => None,
    }
}

/// Records for `pid`'s `t` from a full accounting (see the module doc).
/// Errors only for a process the scan could not read: its figures are
/// unknown, not zero.
pub fn records(acc: &Accounting, pid: i32, t: MemType, classes: &Classes) -> Result<Vec<Record>> {
    if let Some(fixed) = fixed_records(pid, t) {
        return Ok(fixed);
    }
    let Some(p) = acc.process(pid) else {
        // No such process (any more).
        return Ok(split_records(0, 0));
    };
    if let Some(e) = &p.error {
        return Err(Error::new(
            Kind::Internal,
            format!("process {pid} could not be read, so its memory is unknown: {e}"),
        ));
    }
    let (mut shared, mut private) = (0u64, 0u64);
    for b in &p.buffers {
        if b.key.kind != BufferKind::DmaBuf || classes.class_of(b.key, &b.exporter) != t {
            continue;
        }
        if b.shared_with > 1 {
            shared += b.pss;
        } else {
            private += b.pss;
        }
    }
    Ok(split_records(shared, private))
}

/// One `DeviceInfo`: a DRM card and its driver's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuDevice {
    pub id: i32,
    pub name: String,
}

/// The GPUs the kernel lists under `drm_dir` (`/sys/class/drm`): each
/// `card<N>` (not its connectors, not render nodes) as id N, named after
/// its driver (the `device/driver` link), else `card<N>`. Ordered by id;
/// empty where the machine has no DRM device.
pub fn gpu_devices(drm_dir: &Path) -> Vec<GpuDevice> {
    let Ok(entries) = std::fs::read_dir(drm_dir) else {
        return Vec::new();
    };
    let mut out: Vec<GpuDevice> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let id: i32 = file.strip_prefix("card")?.parse().ok()?;
            let name = std::fs::read_link(e.path().join("device/driver"))
                .ok()
                .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                .filter(|n| !n.is_empty())
                .unwrap_or(file);
            Some(GpuDevice { id, name })
        })
        .collect();
    out.sort_by_key(|d| d.id);
    out
}

/// The memtrack service logic behind the binder adapter.
pub struct Memtrack {
    monitor: Arc<Monitor>,
    classes: Arc<Classes>,
    privileged_uids: Vec<u32>,
    max_age: Duration,
    drm_dir: std::path::PathBuf,
}

impl Memtrack {
    pub fn new(monitor: Arc<Monitor>, classes: Arc<Classes>, config: &Config) -> Memtrack {
        Memtrack {
            monitor,
            classes,
            privileged_uids: config.service.privileged_uids.clone(),
            max_age: Duration::from_millis(config.memtrack.max_age_ms),
            drm_dir: DRM_CLASS_DIR.into(),
        }
    }

    /// Reads GPUs from `dir` instead of `/sys/class/drm` (tests).
    pub fn with_drm_dir(mut self, dir: &Path) -> Memtrack {
        self.drm_dir = dir.to_path_buf();
        self
    }

    fn privileged(&self, uid: u32) -> bool {
        uid == 0 || self.privileged_uids.contains(&uid)
    }

    /// `getMemory(pid, type)` for `caller`. A pid of another process needs
    /// a privileged caller (root and `service.privileged_uids`, as for
    /// `getProcessMemory`): the figures say which buffers it holds.
    pub fn get_memory(&self, caller: Caller, pid: i32, raw_type: i32) -> Result<Vec<Record>> {
        let t = check_request(pid, raw_type)?;
        if pid > 0 && pid != caller.pid && !self.privileged(caller.uid) {
            return Err(Error::new(
                Kind::Permission,
                format!(
                    "getMemory({pid}, {}): uid {} may read only its own pid ({}); other pids \
                     need root or one of the privileged uids {:?} (service.privileged_uids)",
                    t.name(),
                    caller.uid,
                    caller.pid,
                    self.privileged_uids
                ),
            ));
        }
        if let Some(fixed) = fixed_records(pid, t) {
            return Ok(fixed);
        }
        let fresh = if self.privileged(caller.uid) {
            self.monitor.recent(self.max_age, None)
        } else {
            self.monitor.recent(self.max_age, Some(caller.uid))
        }
        .map_err(|e| {
            Error::new(
                Kind::Internal,
                format!("getMemory({pid}, {}): {e}; try again", t.name()),
            )
        })?;
        records(&fresh, pid, t, &self.classes)
    }

    /// `getGpuDeviceInfo()`.
    pub fn gpu_device_info(&self) -> Vec<GpuDevice> {
        gpu_devices(&self.drm_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::HwmTracker;
    use crate::heap::HeapKind;
    use crate::procfs::{BufferUse, ProcessScan};
    use crate::registry::Registry;
    use crate::scan::LiveBuffer;
    use std::time::{Instant, SystemTime};

    const MIB: u64 = 1 << 20;

    fn live(inode: u64, size: u64, exporter: &str) -> LiveBuffer {
        LiveBuffer {
            key: BufferKey::dmabuf(inode),
            size,
            exporter: exporter.into(),
            name: format!("b{inode}"),
        }
    }

    fn holder(pid: i32, held: &[(u64, u64, &str)]) -> ProcessScan {
        ProcessScan {
            pid,
            uid: 10000 + pid as u32,
            comm: format!("app{pid}"),
            result: Ok(held
                .iter()
                .map(|(inode, size, exp)| BufferUse {
                    key: BufferKey::dmabuf(*inode),
                    size: Some(*size),
                    map_extent: 0,
                    exporter: Some(exp.to_string()),
                    name: format!("b{inode}"),
                    fd_refs: 1,
                    map_refs: 0,
                })
                .collect()),
        }
    }

    fn record(inode: u64, size: u64, heap: &str) -> BufferRecord {
        BufferRecord {
            inode,
            heap: heap.into(),
            kind: HeapKind::DmaHeap,
            size,
            name: String::new(),
            owner_uid: 10001,
            owner_pid: 101,
            owner_name: "app101".into(),
            allocated_at: SystemTime::now(),
            committed_at: Instant::now(),
        }
    }

    /// pid 101 holds a 4 MiB buffer shared with pid 102 and a private 1 MiB
    /// one; 102 also holds a 2 MiB camera-heap buffer of another exporter.
    fn accounting(records: &[BufferRecord]) -> Accounting {
        let processes = vec![
            holder(101, &[(1, 4 * MIB, "system"), (2, MIB, "system")]),
            holder(102, &[(1, 4 * MIB, "system"), (3, 2 * MIB, "camera")]),
        ];
        let live = vec![
            live(1, 4 * MIB, "system"),
            live(2, MIB, "system"),
            live(3, 2 * MIB, "camera"),
        ];
        crate::accounting::build(
            &processes,
            Some(&live),
            records,
            &mut HwmTracker::new(),
            Instant::now(),
        )
    }

    fn classes() -> Classes {
        Classes::new(&MemtrackConfig::default())
    }

    fn sum(r: &[Record]) -> u64 {
        r.iter().map(|r| r.size).sum()
    }

    #[test]
    fn flags_are_the_frozen_v1_values() {
        use crate::memtrack_aidl::android::hardware::memtrack::MemtrackRecord as R;
        assert_eq!(
            [
                FLAG_SMAPS_ACCOUNTED,
                FLAG_SMAPS_UNACCOUNTED,
                FLAG_SHARED,
                FLAG_SHARED_PSS,
                FLAG_PRIVATE,
                FLAG_SYSTEM,
                FLAG_DEDICATED,
                FLAG_NONSECURE,
                FLAG_SECURE
            ],
            [2, 4, 8, 16, 32, 64, 128, 256, 512]
        );
        // The generated AIDL constants agree with the module's.
        assert_eq!(
            [
                R::FLAG_SMAPS_ACCOUNTED,
                R::FLAG_SMAPS_UNACCOUNTED,
                R::FLAG_SHARED,
                R::FLAG_SHARED_PSS,
                R::FLAG_PRIVATE,
                R::FLAG_SYSTEM,
                R::FLAG_DEDICATED,
                R::FLAG_NONSECURE,
                R::FLAG_SECURE
            ],
            [2, 4, 8, 16, 32, 64, 128, 256, 512]
        );
        for t in MemType::ALL {
            assert_eq!(MemType::from_raw(t as i32), Some(t));
        }
        assert_eq!(MemType::from_raw(5), None);
        assert_eq!(MemType::from_raw(-1), None);
    }

    #[test]
    fn graphics_is_the_dmabuf_pss_split_shared_and_private() {
        let acc = accounting(&[]);
        let r = records(&acc, 101, MemType::Graphics, &classes()).unwrap();
        assert_eq!(
            r,
            [
                Record {
                    flags: FLAG_SMAPS_UNACCOUNTED | FLAG_SHARED_PSS,
                    size: 2 * MIB
                },
                Record {
                    flags: FLAG_SMAPS_UNACCOUNTED | FLAG_PRIVATE,
                    size: MIB
                },
            ]
        );
        // GRAPHICS is exactly the accounting's pss where nothing is camera.
        assert_eq!(sum(&r), acc.process(101).unwrap().pss);
        // 102's camera-exporter buffer is CAMERA, not GRAPHICS.
        let g = records(&acc, 102, MemType::Graphics, &classes()).unwrap();
        assert_eq!(sum(&g), 2 * MIB);
        let c = records(&acc, 102, MemType::Camera, &classes()).unwrap();
        assert_eq!(c[1].size, 2 * MIB, "private camera buffer");
        assert_eq!(c[0].size, 0);
        assert_eq!(sum(&g) + sum(&c), acc.process(102).unwrap().pss);
        assert_eq!(
            sum(&records(&acc, 102, MemType::Multimedia, &classes()).unwrap()),
            0
        );
    }

    #[test]
    fn types_never_overlap_and_add_up_to_the_pss() {
        let acc = accounting(&[]);
        let c = classes();
        for pid in [101, 102] {
            let total: u64 = MemType::ALL
                .iter()
                .map(|t| sum(&records(&acc, pid, *t, &c).unwrap()))
                .sum();
            assert_eq!(total, acc.process(pid).unwrap().pss, "pid {pid}");
        }
    }

    #[test]
    fn a_buffer_allocated_under_the_camera_alias_is_camera_until_freed() {
        let rec = record(2, MIB, "system");
        let acc = accounting(std::slice::from_ref(&rec));
        let c = classes();
        c.note_allocation(BufferKey::dmabuf(2), "camera");
        // Allocated under the heap's own name: stays GRAPHICS, nothing kept.
        c.note_allocation(BufferKey::dmabuf(1), "system");
        assert_eq!(c.remembered(), 1);
        assert_eq!(sum(&records(&acc, 101, MemType::Camera, &c).unwrap()), MIB);
        assert_eq!(
            sum(&records(&acc, 101, MemType::Graphics, &c).unwrap()),
            2 * MIB
        );
        c.forget(&[rec]);
        assert_eq!(c.remembered(), 0);
        assert_eq!(
            sum(&records(&acc, 101, MemType::Graphics, &c).unwrap()),
            3 * MIB
        );
    }

    #[test]
    fn gl_other_pid_zero_and_missing_pids() {
        let acc = accounting(&[]);
        let c = classes();
        for pid in [0, 101] {
            assert!(records(&acc, pid, MemType::Gl, &c).unwrap().is_empty());
            assert!(records(&acc, pid, MemType::Other, &c).unwrap().is_empty());
        }
        for t in [MemType::Graphics, MemType::Camera, MemType::Multimedia] {
            for pid in [0, 99999] {
                let r = records(&acc, pid, t, &c).unwrap();
                assert_eq!(r.len(), 2, "{t:?} {pid}");
                assert_eq!(sum(&r), 0, "{t:?} {pid}");
            }
        }
    }

    #[test]
    fn an_unreadable_process_is_an_error_not_zero() {
        let mut processes = vec![holder(101, &[(1, MIB, "system")])];
        processes.push(ProcessScan {
            pid: 103,
            uid: 10003,
            comm: "hidden".into(),
            result: Err(crate::procfs::ScanError {
                path: "/proc/103/fdinfo".into(),
                kind: std::io::ErrorKind::PermissionDenied,
                errno: Some(13),
                message: "Permission denied".into(),
            }),
        });
        let acc = crate::accounting::build(
            &processes,
            Some(&[live(1, MIB, "system")]),
            &[],
            &mut HwmTracker::new(),
            Instant::now(),
        );
        let e = records(&acc, 103, MemType::Graphics, &classes()).unwrap_err();
        assert_eq!(e.kind, Kind::Internal);
        assert!(e.message.contains("103"), "{e}");
    }

    #[test]
    fn bad_pids_and_types_are_refused_with_the_interface_exceptions() {
        for t in [-1, 0, 1, 2, 3, 4, 5] {
            let e = check_request(-1, t).unwrap_err();
            assert_eq!(e.kind, Kind::IllegalArgument, "{t}: {e}");
            assert!(e.message.contains("pid > 0"), "{e}");
        }
        for t in [-1, 5, i32::MAX] {
            let e = check_request(1, t).unwrap_err();
            assert_eq!(e.kind, Kind::Unsupported, "{t}: {e}");
            assert!(e.message.contains("GRAPHICS (2)"), "{e}");
        }
        assert_eq!(check_request(0, 2), Ok(MemType::Graphics));
    }

    #[test]
    fn other_pids_need_a_privileged_caller() {
        let registry = Arc::new(Registry::new());
        let m = Memtrack::new(
            Arc::new(Monitor::new(registry)),
            Arc::new(classes()),
            &Config::default(),
        );
        let me = std::process::id() as i32;
        let app = Caller {
            uid: 10001,
            pid: me,
        };
        let e = m.get_memory(app, 1, 2).unwrap_err();
        assert_eq!(e.kind, Kind::Permission, "{e}");
        // Its own pid, and pid 0, are fine; so is root for any pid.
        assert_eq!(m.get_memory(app, me, 2).unwrap().len(), 2);
        assert_eq!(sum(&m.get_memory(app, 0, 2).unwrap()), 0);
        let root = Caller { uid: 0, pid: 1 };
        assert_eq!(m.get_memory(root, me, 2).unwrap().len(), 2);
        assert_eq!(
            m.get_memory(root, -1, 2).unwrap_err().kind,
            Kind::IllegalArgument
        );
        assert_eq!(
            m.get_memory(root, 1, 9).unwrap_err().kind,
            Kind::Unsupported
        );
    }

    #[test]
    fn gpus_are_the_drm_cards_named_after_their_driver() {
        let dir = std::env::temp_dir().join(format!("dmabufd-drm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let driver = dir.join("bus/drivers/virtio_gpu");
        std::fs::create_dir_all(&driver).unwrap();
        for card in ["card1", "card0", "card0-HDMI-A-1", "renderD128", "version"] {
            std::fs::create_dir_all(dir.join(card).join("device")).unwrap();
        }
        std::os::unix::fs::symlink(&driver, dir.join("card1/device/driver")).unwrap();
        assert_eq!(
            gpu_devices(&dir),
            [
                GpuDevice {
                    id: 0,
                    name: "card0".into()
                },
                GpuDevice {
                    id: 1,
                    name: "virtio_gpu".into()
                },
            ]
        );
        assert!(gpu_devices(&dir.join("absent")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
