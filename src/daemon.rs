//! Service start-up: config, heaps, transport, and the wait for shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use crate::aidl::vendor::dmabuf::IDmaBufAllocator::BnDmaBufAllocator;
use crate::allocator::Allocator;
use crate::config::Config;
use crate::monitor::Monitor;
use crate::registry::Registry;
use crate::sd_notify::Notifier;
use crate::service::DmaBufService;
use crate::transport::{self, Transport};

/// What the command line asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub rpc: Option<PathBuf>,
    pub kernel: bool,
    /// `--metrics-textfile PATH`: the Prometheus exposition rewritten there
    /// after each scan, for node_exporter's textfile collector.
    pub metrics_textfile: Option<PathBuf>,
}

/// A running service (dropping it stops an RPC server).
pub struct Running {
    pub transport: Transport,
    /// The service state, for in-process dumps (the demo).
    pub service: DmaBufService,
    _guard: Serving,
    runtime: tokio::runtime::Runtime,
    /// systemd's notification socket, when started by a `Type=notify` unit.
    notifier: Option<Arc<Notifier>>,
}

impl Running {
    /// Tells systemd (if it started us) that the service is going away.
    pub fn stopping(&self) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.stopping() {
                log::warn!("systemd notification STOPPING=1 failed: {e}");
            }
        }
    }
}

/// What keeps the server running; dropping it stops an RPC server.
enum Serving {
    Kernel(#[allow(dead_code)] rsbinder::ServerGuard),
    Rpc(#[allow(dead_code)] crate::rpc_gate::RpcGuard),
}

/// Opens the heaps, picks the transport and starts serving. Prints the
/// start-up summary (transport, heaps, config) to the log. Then, with
/// `--metrics-textfile`, writes the metrics there (and after every scan),
/// and, when started by systemd (`$NOTIFY_SOCKET`), sends `READY=1` with a
/// `STATUS=` line — only now: registered or listening, heaps open — and
/// starts the `WATCHDOG=1` pings when `$WATCHDOG_USEC` is set.
pub fn start(opts: &Options) -> Result<Running, String> {
    crate::sys::bound_malloc_arenas();
    let config = Config::load(opts.config.as_deref()).map_err(|e| e.to_string())?;
    let (transport, fallback) = transport::choose(opts.rpc.clone(), opts.kernel);
    let notifier = match Notifier::from_env() {
        None => None,
        Some(Ok(n)) => Some(Arc::new(n)),
        Some(Err(e)) => return Err(format!("systemd notification socket: {e}")),
    };
    let mut running = start_with(config, transport, fallback)?;
    if let Some(path) = &opts.metrics_textfile {
        running
            .service
            .write_metrics_textfile(path.clone())
            .map_err(|e| format!("cannot write the metrics textfile {}: {e}", path.display()))?;
        log::info!(
            "metrics textfile: {} (rewritten after each scan)",
            path.display()
        );
    }
    if let Some(n) = &notifier {
        let status = format!(
            "serving on {}; scan source: {}; {} heap(s)",
            running.transport,
            running.service.scan_source(),
            running.service.heap_count()
        );
        n.ready(&status)
            .map_err(|e| format!("systemd notification READY=1 failed: {e}"))?;
        if let Some(period) = crate::sd_notify::watchdog_interval() {
            log::info!("systemd watchdog: WATCHDOG=1 every {period:?}");
            running.runtime.spawn(watchdog(n.clone(), period));
        }
    }
    running.notifier = notifier;
    Ok(running)
}

/// Sends `WATCHDOG=1` every `period` from the service's runtime (the one
/// the background scanner runs on): a runtime that stops scheduling stops
/// the pings, and systemd restarts the service.
async fn watchdog(n: Arc<Notifier>, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match n.watchdog() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                log::warn!("systemd notification WATCHDOG=1 failed: {e}");
            }
            Err(_) => {}
        }
    }
}

/// [`start`] with a config and transport already chosen.
pub fn start_with(
    config: Config,
    transport: Transport,
    fallback: Option<String>,
) -> Result<Running, String> {
    let config_desc = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let service_ids = config
        .service
        .user
        .map(|uid| (uid, config.service.group.unwrap_or(uid)));
    // The journal is opened while still root (its directory may be new).
    let (registry, loaded) = open_registry(&config, &transport, service_ids);
    let registry = Arc::new(registry);
    let (allocator, discovery) = Allocator::discover(config, registry);
    let allocator = Arc::new(allocator);

    // The scan source is chosen while still root: BPF programs are loaded
    // and attached here, and stay readable after the drop.
    let memfd_heaps = allocator
        .heaps()
        .iter()
        .any(|h| h.kind == crate::heap::HeapKind::Memfd);
    let chosen = crate::scan::source::choose(allocator.config().service.scan_source, memfd_heaps)?;
    log::info!("scan source: {}", chosen.reason);
    let bpf = chosen.source.name() == "bpf";
    let monitor = Arc::new(Monitor::with_source(
        allocator.registry().clone(),
        chosen.source,
        chosen.reason,
    ));
    recover(&monitor, allocator.registry(), loaded);
    // Pools: planned (a bad class is a start-up error) and the PSI trigger
    // written while still root; their threads start after the drop.
    let pools = allocator.plan_pools()?;
    let pressure = pools.as_ref().map(|_| {
        let p = &allocator.config().pools;
        let (watch, note) = crate::pressure::PressureWatch::open(&p.psi_trigger, p.min_available);
        log::info!("pools: memory pressure from {note}");
        watch
    });

    // Privileges go before any thread starts (capabilities are per thread)
    // and before registering (the hub policy admits only the service uid).
    if let Some((uid, gid)) = service_ids {
        let keep: &[caps::Capability] = if bpf {
            &[]
        } else {
            crate::privileges::KEPT_CAPABILITIES
        };
        let dropped = crate::privileges::drop_privileges(uid, gid, keep)
            .map_err(|e| format!("cannot drop privileges to {uid}:{gid}: {e}"))?;
        log::info!("{dropped}");
    }
    let reclaim = monitor.clone();
    allocator.set_reclaim(Box::new(move || reclaim.reclaim()));
    if let (Some(pools), Some(watch)) = (pools, pressure) {
        monitor.set_pools(pools.clone());
        let make = allocator.pool_maker();
        let filler = pools.clone();
        std::thread::Builder::new()
            .name("dmabufd-pool".into())
            .spawn(move || filler.run(make))
            .map_err(|e| format!("cannot start the pool filler: {e}"))?;
        watch
            .spawn(&pools)
            .map_err(|e| format!("cannot start the pressure watcher: {e}"))?;
        let classes: Vec<String> = pools
            .status()
            .iter()
            .map(|c| format!("{} {} x {}", c.heap, c.size, c.target))
            .collect();
        log::info!("pools: filling {}", classes.join(", "));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dmabufd-scan")
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime for the background scanner: {e}"))?;
    let period = std::time::Duration::from_millis(allocator.config().service.scan_interval_ms);
    runtime.spawn(monitor.clone().run(period));
    // Kernel binder replies land in the caller's ~1 MiB binder buffer; RPC
    // replies have no such bound.
    let reply_limit =
        matches!(transport, Transport::Kernel).then_some(crate::service::KERNEL_BINDER_REPLY_LIMIT);
    let mut service =
        DmaBufService::new(allocator.clone(), monitor.clone()).with_reply_limit(reply_limit);
    let memtrack = memtrack_binder(allocator.config(), &monitor);
    if let Some((classes, _)) = &memtrack {
        service = service.with_memtrack_classes(classes.clone());
    }
    let binder = BnDmaBufAllocator::new_binder(service.clone());
    let guard = match &transport {
        Transport::Kernel => {
            let name = crate::service_name(&allocator.config().service.instance);
            transport::serve_kernel(binder.as_binder(), &name).map(Serving::Kernel)
        }
        Transport::Rpc(p) => {
            let c = allocator.config();
            let mut privileged = c.service.privileged_uids.clone();
            privileged.push(0);
            let extra: Vec<_> = memtrack
                .iter()
                .map(|(_, b)| (crate::MEMTRACK_SERVICE_NAME, b.clone()))
                .collect();
            transport::serve_rpc(p, binder.as_binder(), extra, &c.rpc, privileged).map(Serving::Rpc)
        }
    }
    .map_err(|e| format!("cannot serve on {transport}: {e}"))?;
    // On kernel binder the memtrack HAL is registered on its own: a service
    // manager that refuses it (policy, a vendor memtrack already there)
    // leaves the allocator serving.
    let default_instance = allocator.config().service.instance == crate::config::DEFAULT_INSTANCE;
    match (&memtrack, &transport) {
        (None, _) => log::info!("memtrack HAL off ([memtrack] enabled = false)"),
        // There is one IMemtrack/default per device: a second allocator
        // instance must not take it over from the first.
        (Some(_), Transport::Kernel) if !default_instance => log::info!(
            "memtrack HAL left to the default instance (this is {:?})",
            allocator.config().service.instance
        ),
        (Some((_, b)), Transport::Kernel) => {
            match transport::add_kernel_service(crate::MEMTRACK_SERVICE_NAME, b.clone()) {
                Ok(()) => log::info!("memtrack HAL: {}", crate::MEMTRACK_SERVICE_NAME),
                Err(e) => log::error!("memtrack HAL not served: {e}"),
            }
        }
        (Some(_), Transport::Rpc(_)) => log::info!(
            "memtrack HAL: {} on the same socket",
            crate::MEMTRACK_SERVICE_NAME
        ),
    }

    let heaps: Vec<String> = allocator
        .heaps()
        .iter()
        .map(|h| format!("{} ({}, max {})", h.name, h.kind, h.max_size))
        .collect();
    log::info!(
        "serving on {transport}; heaps: {}; config: {config_desc}",
        heaps.join(", ")
    );
    let notes: Vec<&str> = fallback
        .iter()
        .chain(discovery.notes.iter())
        .map(String::as_str)
        .collect();
    if !notes.is_empty() {
        log::info!("fallbacks: {}", notes.join("; "));
    }
    Ok(Running {
        transport,
        service,
        _guard: guard,
        runtime,
        notifier: None,
    })
}

/// The memtrack HAL's classes and binder when `[memtrack] enabled`; the
/// classes forget each buffer once the monitor finds it freed.
fn memtrack_binder(
    config: &Config,
    monitor: &Arc<Monitor>,
) -> Option<(Arc<crate::memtrack::Classes>, rsbinder::SIBinder)> {
    if !config.memtrack.enabled {
        return None;
    }
    let classes = Arc::new(crate::memtrack::Classes::new(&config.memtrack));
    let forget = classes.clone();
    monitor.on_freed(Box::new(move |freed| forget.forget(freed)));
    let memtrack = crate::memtrack::Memtrack::new(monitor.clone(), classes.clone(), config);
    let binder = crate::memtrack_service::MemtrackService::new(Arc::new(memtrack)).binder();
    Some((classes, binder))
}

/// Where the registry journal lives: the config's `state_file`, else next
/// to the RPC socket, else `/run/dmabufd/` (Linux) or
/// `/data/vendor/dmabufd/` (Android, cleared at boot by the rc).
pub fn journal_path(config: &Config, transport: &Transport) -> Option<PathBuf> {
    if let Some(p) = &config.service.state_file {
        return (!p.as_os_str().is_empty()).then(|| p.clone());
    }
    Some(match transport {
        Transport::Rpc(sock) => sock.with_extension("registry"),
        Transport::Kernel => {
            let dir = if cfg!(target_os = "android") {
                "/data/vendor/dmabufd"
            } else {
                "/run/dmabufd"
            };
            // One journal per instance: two services never share one.
            let instance = &config.service.instance;
            PathBuf::from(dir).join(if instance == crate::config::DEFAULT_INSTANCE {
                "registry.journal".to_string()
            } else {
                format!("registry-{instance}.journal")
            })
        }
    })
}

/// The registry, with its journal when one can be opened; a journal that
/// cannot be opened is a warning (the service runs without restart
/// recovery), never a failure to start.
fn open_registry(
    config: &Config,
    transport: &Transport,
    service_ids: Option<(u32, u32)>,
) -> (Registry, Option<crate::journal::Loaded>) {
    let Some(path) = journal_path(config, transport) else {
        return (Registry::new(), None);
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
            // A directory we made for the service belongs to the service, so
            // it can still compact the journal after the drop.
            if let (Ok(()), Some((uid, gid))) = (made, service_ids) {
                let _ = nix::unistd::chown(
                    dir,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                );
            }
        }
    }
    match crate::journal::Journal::open(&path) {
        Ok((journal, loaded)) => {
            if let Some((uid, gid)) = service_ids {
                let _ = nix::unistd::chown(
                    &path,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                );
            }
            if let Some(w) = &loaded.warning {
                log::warn!("registry journal {}: {w}", path.display());
            }
            (Registry::with_journal(journal), Some(loaded))
        }
        Err(e) => {
            log::warn!(
                "cannot open the registry journal {}: {e}; owners will not survive a restart",
                path.display()
            );
            (Registry::new(), None)
        }
    }
}

/// Keeps the reloaded records whose buffers are still alive, logs how many
/// of each, and rewrites the journal to the survivors.
fn recover(monitor: &Monitor, registry: &Registry, loaded: Option<crate::journal::Loaded>) {
    let Some(loaded) = loaded else { return };
    if loaded.records.is_empty() {
        registry.compact_journal();
        return;
    }
    let n = loaded.records.len();
    match monitor.current_scan() {
        Ok(scan) => {
            let (kept, dropped) =
                crate::journal::still_alive(loaded.records, scan.live.as_deref(), &scan.processes);
            log::info!(
                "restart: {} of {n} recorded buffers still alive, owners kept; {} freed while down, dropped",
                kept.len(),
                dropped.len()
            );
            registry.restore(kept);
        }
        Err(e) => {
            // Nothing can be checked: keep them all; the monitor drops the
            // freed ones at its first scan.
            log::warn!("restart: cannot scan ({e}); keeping all {n} recorded buffers for now");
            registry.restore(loaded.records);
        }
    }
    registry.compact_journal();
}

/// Blocks until SIGINT or SIGTERM.
pub fn wait_for_shutdown() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("no runtime for signal handling: {e}");
            loop {
                std::thread::park();
            }
        }
    };
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
}
