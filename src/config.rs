//! Service configuration: heap locations, aliases, per-heap size caps,
//! per-uid quotas and who may read other processes' reports. A TOML file
//! (`--config`, else /etc/dmabufd.toml when present); every field has a
//! documented default so the service runs without one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default cap on one allocation when the config names none for a heap.
pub const DEFAULT_MAX_SIZE: u64 = 256 << 20;
/// Default per-uid quota: bytes of live buffers.
pub const DEFAULT_QUOTA_BYTES: u64 = 1 << 30;
/// Default per-uid quota: number of live buffers.
pub const DEFAULT_QUOTA_BUFFERS: u64 = 4096;
/// Privileged uids besides root when the config has no
/// `service.privileged_uids`: Android's system uid (1000) on Android; none
/// elsewhere, where uid 1000 is usually the first human user.
#[cfg(target_os = "android")]
pub const DEFAULT_PRIVILEGED_UIDS: &[u32] = &[1000];
#[cfg(not(target_os = "android"))]
pub const DEFAULT_PRIVILEGED_UIDS: &[u32] = &[];
/// Where the service looks for a config when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dmabufd.toml";
/// Default cap on RPC connections in total.
pub const DEFAULT_RPC_MAX_CONNECTIONS: usize = 256;
/// Default cap on RPC connections of one uid (privileged uids: none).
pub const DEFAULT_RPC_MAX_PER_UID: usize = 32;
/// Default number of RPC connections kept for uids that hold none.
pub const DEFAULT_RPC_RESERVED: usize = 16;
/// Default time an RPC connection may stay silent before it is closed.
pub const DEFAULT_RPC_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default number of processes with their own Prometheus series.
pub const DEFAULT_METRICS_MAX_PROCESSES: usize = 20;
/// The most `service.metrics_max_processes` may be.
pub const MAX_METRICS_PROCESSES: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the config came from (None: built-in defaults).
    pub source: Option<PathBuf>,
    pub service: ServiceConfig,
    pub heaps: HeapsConfig,
    /// alias -> heap name (e.g. camera -> system).
    pub aliases: BTreeMap<String, String>,
    pub quota: QuotaConfig,
    pub rpc: RpcConfig,
    /// Reserve pools per heap (`[pools]`, see `pool.rs`); none by default.
    pub pools: crate::pool::PoolConfig,
    pub memtrack: MemtrackConfig,
}

/// The memtrack HAL (`[memtrack]`): whether the service also serves
/// `android.hardware.memtrack.IMemtrack/default`, and which buffers count as
/// CAMERA and MULTIMEDIA instead of GRAPHICS (see `crate::memtrack`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemtrackConfig {
    /// Serve IMemtrack (default true). A device whose GPU driver ships its
    /// own memtrack sets false: there is one `IMemtrack/default`.
    pub enabled: bool,
    /// Heap or alias names whose buffers are CAMERA (default `["camera"]`).
    pub camera: Vec<String>,
    /// Heap or alias names whose buffers are MULTIMEDIA (default `["multimedia"]`).
    pub multimedia: Vec<String>,
    /// getMemory answers from a scan that started at most this long before
    /// the call (default 1000 ms), so `dumpsys meminfo` asking for every
    /// process costs one scan, not one per process; 0 scans for every call.
    pub max_age_ms: u64,
}

impl Default for MemtrackConfig {
    fn default() -> Self {
        MemtrackConfig {
            enabled: true,
            camera: vec!["camera".into()],
            multimedia: vec!["multimedia".into()],
            max_age_ms: 1000,
        }
    }
}

/// Limits on the RPC socket (the Unix-socket transport; kernel binder has
/// its own). See etc/dmabufd.toml and the README's "RPC connection limits".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcConfig {
    /// Connections open at once, all uids together (a hard cap).
    pub max_connections: usize,
    /// Connections of one uid at once; root and the privileged uids are
    /// exempt (they are still held to the total).
    pub max_connections_per_uid: usize,
    /// The last this many of `max_connections` go only to a uid that holds
    /// no connection yet, so a new client gets in while others sit at
    /// their caps.
    pub reserved_connections: usize,
    /// A connection that sends nothing for this long is closed (also the
    /// bound on a connection that never completes its handshake).
    pub idle_timeout_ms: u64,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_connections: DEFAULT_RPC_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_RPC_MAX_PER_UID,
            reserved_connections: DEFAULT_RPC_RESERVED,
            idle_timeout_ms: DEFAULT_RPC_IDLE_TIMEOUT_MS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Uid/gid to switch to after the heap devices are open (None: stay).
    pub user: Option<u32>,
    pub group: Option<u32>,
    /// Uids besides root that may read any process's report and reset any
    /// hwm ([`DEFAULT_PRIVILEGED_UIDS`] when the config names none).
    pub privileged_uids: Vec<u32>,
    /// Period of the background scan that keeps hwm and the registry current.
    pub scan_interval_ms: u64,
    /// Where holders and live buffers are read from.
    pub scan_source: crate::scan::SourceChoice,
    /// The registry journal that survives a restart of the service
    /// (`None`: next to the RPC socket, or `/run/dmabufd/registry.journal`
    /// on kernel binder; an empty path turns it off).
    pub state_file: Option<PathBuf>,
    /// How many processes (the largest by rss) get their own series in
    /// the Prometheus metrics; the rest are summed in one series, so the
    /// number of series stays bounded however many processes hold buffers.
    pub metrics_max_processes: usize,
    /// Bytes per page of getMemoryReportPage / renderDumpChunk replies.
    pub report_page_bytes: usize,
    /// The AIDL instance registered on kernel binder:
    /// `vendor.dmabuf.IDmaBufAllocator/<instance>` ("default"). A second
    /// instance (a benchmark's, a product's second allocator) gets its own
    /// journal and leaves the memtrack HAL to the default one.
    pub instance: String,
}

/// Page size of the paged report methods: well inside the ~1 MiB binder
/// buffer a reply lands in, which other transactions share.
pub const DEFAULT_REPORT_PAGE_BYTES: usize = 256 * 1024;

/// The AIDL instance a service registers unless the config names another.
pub const DEFAULT_INSTANCE: &str = "default";

/// An AIDL instance name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_instance(i: &str) -> bool {
    (1..=64).contains(&i.len())
        && i.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The range service.report_page_bytes may take.
pub const REPORT_PAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 4096..=512 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapsConfig {
    pub dma_heap_dir: PathBuf,
    pub udmabuf_device: PathBuf,
    pub default_max_size: u64,
    /// Per-heap cap on one allocation, by heap name.
    pub max_size: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    pub default_bytes: u64,
    pub default_buffers: u64,
    pub per_uid: BTreeMap<u32, Quota>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub buffers: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            service: ServiceConfig {
                user: None,
                group: None,
                privileged_uids: DEFAULT_PRIVILEGED_UIDS.to_vec(),
                scan_interval_ms: 5000,
                scan_source: crate::scan::SourceChoice::Auto,
                state_file: None,
                metrics_max_processes: DEFAULT_METRICS_MAX_PROCESSES,
                report_page_bytes: DEFAULT_REPORT_PAGE_BYTES,
                instance: DEFAULT_INSTANCE.to_string(),
            },
            heaps: HeapsConfig {
                dma_heap_dir: PathBuf::from("/dev/dma_heap"),
                udmabuf_device: PathBuf::from("/dev/udmabuf"),
                default_max_size: DEFAULT_MAX_SIZE,
                max_size: BTreeMap::new(),
            },
            aliases: BTreeMap::new(),
            quota: QuotaConfig {
                default_bytes: DEFAULT_QUOTA_BYTES,
                default_buffers: DEFAULT_QUOTA_BUFFERS,
                per_uid: BTreeMap::new(),
            },
            rpc: RpcConfig::default(),
            pools: crate::pool::PoolConfig::default(),
            memtrack: MemtrackConfig::default(),
        }
    }
}

impl Config {
    /// Loads `path`, or the default path when it exists, or the defaults.
    /// Aliases are checked against the heaps this machine has
    /// ([`check_aliases`](Self::check_aliases)).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let c = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        c.check_aliases(&c.machine_heap_names())
            .map_err(|e| match &c.source {
                Some(p) => ConfigError(format!("{}: {}", p.display(), e.0)),
                None => e,
            })?;
        Ok(c)
    }

    /// The heap names the service will serve here, as discovery names them
    /// (without opening anything): every character device in
    /// `heaps.dma_heap_dir`, `udmabuf` when its device exists, and
    /// `system` (a kernel heap, else the memfd fallback).
    pub fn machine_heap_names(&self) -> std::collections::BTreeSet<String> {
        use std::os::unix::fs::FileTypeExt;
        let mut names: std::collections::BTreeSet<String> =
            std::fs::read_dir(&self.heaps.dma_heap_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_char_device()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
        if self.heaps.udmabuf_device.exists() {
            names.insert(crate::heap::udmabuf::UDMABUF_HEAP_NAME.to_string());
        }
        names.insert("system".to_string());
        names
    }

    /// Refuses aliases named like one of `heaps`: such an alias would send
    /// that heap's requests elsewhere.
    pub fn check_aliases(
        &self,
        heaps: &std::collections::BTreeSet<String>,
    ) -> Result<(), ConfigError> {
        let bad: Vec<String> = self
            .aliases
            .iter()
            .filter(|(a, _)| heaps.contains(*a))
            .map(|(a, t)| format!("aliases.{a} = {t:?}"))
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        Err(ConfigError(format!(
            "{} named like a heap this machine has; an alias must be a new name for a heap \
             (heaps: {})",
            bad.join(", "),
            heaps.iter().cloned().collect::<Vec<_>>().join(", ")
        )))
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let mut c =
            Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        let mut c = Config::default();
        if let Some(s) = raw.service {
            c.service.user = s.user;
            c.service.group = s.group.or(s.user);
            if let Some(uids) = s.privileged_uids {
                c.service.privileged_uids = uids;
            }
            if let Some(ms) = s.scan_interval_ms {
                if ms == 0 {
                    return Err(ConfigError("service.scan_interval_ms must be > 0".into()));
                }
                c.service.scan_interval_ms = ms;
            }
            if let Some(src) = s.scan_source {
                c.service.scan_source =
                    crate::scan::SourceChoice::parse(&src).ok_or_else(|| {
                        ConfigError(format!(
                            "service.scan_source = {src:?}; allowed: \"auto\", \"bpf\", \"procfs\""
                        ))
                    })?;
            }
            c.service.state_file = s.state_file;
            if let Some(i) = s.instance {
                if !valid_instance(&i) {
                    return Err(ConfigError(format!(
                        "service.instance = {:?}: allowed 1 to 64 characters of A-Z, a-z, 0-9, \
                         '.', '_' and '-'",
                        crate::report::escape::escape(&i)
                    )));
                }
                c.service.instance = i;
            }
            if let Some(n) = s.metrics_max_processes {
                if n > MAX_METRICS_PROCESSES {
                    return Err(ConfigError(format!(
                        "service.metrics_max_processes = {n}; allowed: 0 to {MAX_METRICS_PROCESSES} \
                         (each process is a series of its own)"
                    )));
                }
                c.service.metrics_max_processes = n;
            }
            if let Some(b) = s.report_page_bytes {
                let b = b.bytes("service.report_page_bytes")?;
                let b = usize::try_from(b)
                    .ok()
                    .filter(|b| REPORT_PAGE_BYTES_RANGE.contains(b))
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "service.report_page_bytes = {b}; allowed: {} to {} bytes",
                            REPORT_PAGE_BYTES_RANGE.start(),
                            REPORT_PAGE_BYTES_RANGE.end()
                        ))
                    })?;
                c.service.report_page_bytes = b;
            }
        }
        if let Some(h) = raw.heaps {
            if let Some(d) = h.dma_heap_dir {
                c.heaps.dma_heap_dir = d;
            }
            if let Some(d) = h.udmabuf_device {
                c.heaps.udmabuf_device = d;
            }
            if let Some(s) = h.default_max_size {
                c.heaps.default_max_size = s.bytes("heaps.default_max_size")?;
            }
            for (k, v) in h.max_size.unwrap_or_default() {
                let b = v.bytes(&format!("heaps.max_size.{k}"))?;
                c.heaps.max_size.insert(k, b);
            }
        }
        c.aliases = raw.aliases.unwrap_or_default();
        for (alias, target) in &c.aliases {
            if c.aliases.contains_key(target) {
                return Err(ConfigError(format!(
                    "aliases.{alias} = {target:?}: an alias must name a heap, not another alias"
                )));
            }
        }
        if let Some(q) = raw.quota {
            if let Some(b) = q.default_bytes {
                c.quota.default_bytes = b.bytes("quota.default_bytes")?;
            }
            if let Some(n) = q.default_buffers {
                c.quota.default_buffers = n;
            }
            for u in q.uid.unwrap_or_default() {
                let bytes = match u.bytes {
                    Some(b) => b.bytes(&format!("quota.uid {} bytes", u.uid))?,
                    None => c.quota.default_bytes,
                };
                let buffers = u.buffers.unwrap_or(c.quota.default_buffers);
                c.quota.per_uid.insert(u.uid, Quota { bytes, buffers });
            }
        }
        if let Some(r) = raw.rpc {
            let d = &mut c.rpc;
            d.max_connections = r.max_connections.unwrap_or(d.max_connections);
            d.max_connections_per_uid = r
                .max_connections_per_uid
                .unwrap_or(d.max_connections_per_uid);
            d.reserved_connections = r.reserved_connections.unwrap_or(d.reserved_connections);
            d.idle_timeout_ms = r.idle_timeout_ms.unwrap_or(d.idle_timeout_ms);
        }
        c.rpc.check()?;
        if let Some(p) = raw.pools {
            c.pools = crate::pool::PoolConfig::from_toml(&p).map_err(ConfigError)?;
        }
        if let Some(m) = raw.memtrack {
            let d = &mut c.memtrack;
            d.enabled = m.enabled.unwrap_or(d.enabled);
            d.camera = m.camera.unwrap_or_else(|| d.camera.clone());
            d.multimedia = m.multimedia.unwrap_or_else(|| d.multimedia.clone());
            d.max_age_ms = m.max_age_ms.unwrap_or(d.max_age_ms);
            if let Some(both) = d.camera.iter().find(|n| d.multimedia.contains(n)) {
                return Err(ConfigError(format!(
                    "memtrack: {both:?} is in both camera and multimedia; memtrack types must \
                     not overlap, so a name may be in one list only"
                )));
            }
        }
        Ok(c)
    }

    /// The cap on one allocation from `heap`.
    pub fn max_size(&self, heap: &str) -> u64 {
        self.heaps
            .max_size
            .get(heap)
            .copied()
            .unwrap_or(self.heaps.default_max_size)
    }

    pub fn quota_for(&self, uid: u32) -> Quota {
        self.quota.per_uid.get(&uid).copied().unwrap_or(Quota {
            bytes: self.quota.default_bytes,
            buffers: self.quota.default_buffers,
        })
    }

    /// Root and the privileged uids (configured, else the platform's
    /// default) may read every process's report.
    pub fn is_privileged(&self, uid: u32) -> bool {
        uid == 0 || self.service.privileged_uids.contains(&uid)
    }
}

impl RpcConfig {
    /// The reserve must leave room for one uid at its cap, and a new
    /// client must always find a reserved slot.
    fn check(&self) -> Result<(), ConfigError> {
        let r = self;
        if r.idle_timeout_ms == 0 {
            return Err(ConfigError("rpc.idle_timeout_ms must be > 0".into()));
        }
        if r.max_connections_per_uid == 0 || r.reserved_connections == 0 {
            return Err(ConfigError(
                "rpc.max_connections_per_uid and rpc.reserved_connections must be > 0".into(),
            ));
        }
        if r.max_connections_per_uid + r.reserved_connections > r.max_connections {
            return Err(ConfigError(format!(
                "rpc.max_connections_per_uid ({}) + rpc.reserved_connections ({}) must not exceed \
                 rpc.max_connections ({}): one uid at its cap must leave the reserve free",
                r.max_connections_per_uid, r.reserved_connections, r.max_connections
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A size written as a number of bytes or a string with a K/M/G suffix.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self, what: &str) -> Result<u64, ConfigError> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t).ok_or_else(|| {
                ConfigError(format!(
                    "{what} = {t:?}: expected bytes or a number with a K, M or G suffix"
                ))
            }),
        }
    }
}

pub use dmabufd_client::parse_size;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    service: Option<RawService>,
    heaps: Option<RawHeaps>,
    aliases: Option<BTreeMap<String, String>>,
    quota: Option<RawQuota>,
    rpc: Option<RawRpc>,
    pools: Option<toml::Value>,
    memtrack: Option<RawMemtrack>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemtrack {
    enabled: Option<bool>,
    camera: Option<Vec<String>>,
    multimedia: Option<Vec<String>>,
    max_age_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRpc {
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    reserved_connections: Option<usize>,
    idle_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    user: Option<u32>,
    group: Option<u32>,
    privileged_uids: Option<Vec<u32>>,
    scan_interval_ms: Option<u64>,
    scan_source: Option<String>,
    state_file: Option<PathBuf>,
    metrics_max_processes: Option<usize>,
    report_page_bytes: Option<Size>,
    instance: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaps {
    dma_heap_dir: Option<PathBuf>,
    udmabuf_device: Option<PathBuf>,
    default_max_size: Option<Size>,
    max_size: Option<BTreeMap<String, Size>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    default_bytes: Option<Size>,
    default_buffers: Option<u64>,
    uid: Option<Vec<RawUidQuota>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUidQuota {
    uid: u32,
    bytes: Option<Size>,
    buffers: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtrack_defaults_and_overlap_is_refused() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.memtrack, MemtrackConfig::default());
        assert!(c.memtrack.enabled);
        let c = Config::parse(
            "[memtrack]\nenabled = false\ncamera = [\"cam\", \"isp\"]\nmultimedia = []\nmax_age_ms = 0\n",
        )
        .unwrap();
        assert!(!c.memtrack.enabled);
        assert_eq!(c.memtrack.camera, ["cam", "isp"]);
        assert!(c.memtrack.multimedia.is_empty());
        assert_eq!(c.memtrack.max_age_ms, 0);
        let e = Config::parse("[memtrack]\ncamera = [\"x\"]\nmultimedia = [\"x\"]\n").unwrap_err();
        assert!(e.0.contains("\"x\" is in both"), "{e}");
        let e = Config::parse("[memtrack]\nenable = true\n").unwrap_err();
        assert!(e.0.contains("enable"), "{e}");
    }

    #[test]
    fn instance_names_are_checked_and_get_their_own_journal() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.service.instance, "default");
        let c = Config::parse("[service]\ninstance = \"pool-bench_2.x\"\n").unwrap();
        assert_eq!(c.service.instance, "pool-bench_2.x");
        let kernel = crate::transport::Transport::Kernel;
        let j = crate::daemon::journal_path(&c, &kernel).unwrap();
        assert!(j.ends_with("registry-pool-bench_2.x.journal"), "{j:?}");
        let d = crate::daemon::journal_path(&Config::default(), &kernel).unwrap();
        assert!(d.ends_with("registry.journal"), "{d:?}");
        for bad in ["", "a/b", "x y", "\n", &"i".repeat(65)] {
            let e = Config::parse(&format!("[service]\ninstance = {bad:?}\n")).unwrap_err();
            assert!(
                e.0.contains("service.instance") && e.0.contains("allowed 1 to 64"),
                "{e}"
            );
            assert!(!e.0.contains('\n'), "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.max_size("system"), DEFAULT_MAX_SIZE);
        assert_eq!(
            c.quota_for(10001),
            Quota {
                bytes: DEFAULT_QUOTA_BYTES,
                buffers: DEFAULT_QUOTA_BUFFERS
            }
        );
        assert!(c.is_privileged(0) && !c.is_privileged(10001));
    }

    /// 1000 is Android's system uid but the first human user on a Linux
    /// desktop: privileged by default only on Android, and the config's
    /// list (when present) is the whole list besides root.
    #[test]
    fn uid_1000_is_privileged_by_default_only_on_android() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.is_privileged(1000), cfg!(target_os = "android"));
        assert_eq!(
            c.service.privileged_uids,
            if cfg!(target_os = "android") {
                vec![1000]
            } else {
                vec![]
            }
        );
        let c = Config::parse("[service]\nprivileged_uids = [1000]").unwrap();
        assert!(c.is_privileged(1000));
        let c = Config::parse("[service]\nprivileged_uids = [2000]").unwrap();
        assert!(c.is_privileged(2000) && !c.is_privileged(1000));
        assert!(c.is_privileged(0), "root always is");
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            r#"
            [service]
            user = 1100
            privileged_uids = [2000]
            [heaps]
            dma_heap_dir = "/tmp/heaps"
            default_max_size = "64M"
            [heaps.max_size]
            system = "512M"
            [aliases]
            camera = "system"
            [quota]
            default_bytes = "1G"
            [[quota.uid]]
            uid = 10001
            bytes = "8M"
            buffers = 3
            "#,
        )
        .unwrap();
        assert_eq!(c.service.user, Some(1100));
        assert_eq!(c.service.group, Some(1100), "group defaults to user");
        assert!(c.is_privileged(2000));
        assert_eq!(c.max_size("system"), 512 << 20);
        assert_eq!(c.max_size("other"), 64 << 20);
        assert_eq!(c.aliases["camera"], "system");
        assert_eq!(
            c.quota_for(10001),
            Quota {
                bytes: 8 << 20,
                buffers: 3
            }
        );
        assert_eq!(c.heaps.dma_heap_dir, PathBuf::from("/tmp/heaps"));
    }

    #[test]
    fn aliases_named_like_a_heap_are_refused() {
        let c = Config::parse("[aliases]\ncamera = \"udmabuf\"\nsystem = \"udmabuf\"").unwrap();
        let heaps: std::collections::BTreeSet<String> =
            ["system".to_string(), "udmabuf".to_string()].into();
        let e = c.check_aliases(&heaps).unwrap_err();
        assert!(e.0.contains("aliases.system = \"udmabuf\""), "{e}");
        assert!(!e.0.contains("aliases.camera"), "{e}");
        assert!(c.machine_heap_names().contains("system"));
        let ok = Config::parse("[aliases]\ncamera = \"system\"").unwrap();
        assert!(ok.check_aliases(&heaps).is_ok());
    }

    #[test]
    fn rpc_limits_default_and_are_checked() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.rpc, RpcConfig::default());
        let c = Config::parse(
            "[rpc]\nmax_connections = 10\nmax_connections_per_uid = 4\nreserved_connections = 6\n\
             idle_timeout_ms = 500",
        )
        .unwrap();
        assert_eq!(
            (c.rpc.max_connections, c.rpc.max_connections_per_uid),
            (10, 4)
        );
        assert_eq!(
            (c.rpc.reserved_connections, c.rpc.idle_timeout_ms),
            (6, 500)
        );
        let e =
            Config::parse("[rpc]\nmax_connections = 10\nmax_connections_per_uid = 8").unwrap_err();
        assert!(e.0.contains("rpc.max_connections_per_uid (8)"), "{e}");
        assert!(Config::parse("[rpc]\nidle_timeout_ms = 0").is_err());
        assert!(Config::parse("[rpc]\nreserved_connections = 0").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse("[heaps]\ndefault_max_size = \"lots\"").unwrap_err();
        assert!(e.0.contains("heaps.default_max_size"), "{e}");
        let e = Config::parse("[heap]\n").unwrap_err();
        assert!(e.0.contains("heap"), "{e}");
        let e = Config::parse("[aliases]\na = \"b\"\nb = \"system\"").unwrap_err();
        assert!(e.0.contains("alias"), "{e}");
    }

    #[test]
    fn metrics_max_processes_is_bounded() {
        assert_eq!(
            Config::parse("").unwrap().service.metrics_max_processes,
            DEFAULT_METRICS_MAX_PROCESSES
        );
        let c = Config::parse("[service]\nmetrics_max_processes = 3").unwrap();
        assert_eq!(c.service.metrics_max_processes, 3);
        let e = Config::parse("[service]\nmetrics_max_processes = 5000").unwrap_err();
        assert!(e.0.contains("service.metrics_max_processes = 5000"), "{e}");
        assert!(e.0.contains("0 to 1000"), "{e}");
    }
}
