//! Service start-up: config, heaps, transport, and the wait for shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use crate::aidl::vendor::dmabuf::IDmaBufAllocator::BnDmaBufAllocator;
use crate::allocator::Allocator;
use crate::config::Config;
use crate::monitor::Monitor;
use crate::registry::Registry;
use crate::service::DmaBufService;
use crate::transport::{self, Transport};

/// What the command line asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub config: Option<PathBuf>,
    pub rpc: Option<PathBuf>,
    pub kernel: bool,
}

/// A running service (dropping it stops an RPC server).
pub struct Running {
    pub transport: Transport,
    /// The service state, for in-process dumps (the demo).
    pub service: DmaBufService,
    _guard: rsbinder::ServerGuard,
    _runtime: tokio::runtime::Runtime,
}

/// Opens the heaps, picks the transport and starts serving. Prints the
/// start-up summary (transport, heaps, config) to the log.
pub fn start(opts: &Options) -> Result<Running, String> {
    let config = Config::load(opts.config.as_deref()).map_err(|e| e.to_string())?;
    let (transport, fallback) = transport::choose(opts.rpc.clone(), opts.kernel);
    start_with(config, transport, fallback)
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
    let registry = Arc::new(Registry::new());
    let (allocator, discovery) = Allocator::discover(config, registry);
    let allocator = Arc::new(allocator);

    // Privileges go before any thread starts (capabilities are per thread)
    // and before registering (the hub policy admits only the service uid).
    if let Some(uid) = allocator.config().service.user {
        let gid = allocator.config().service.group.unwrap_or(uid);
        let dropped = crate::privileges::drop_privileges(uid, gid)
            .map_err(|e| format!("cannot drop privileges to {uid}:{gid}: {e}"))?;
        log::info!("{dropped}");
    }
    let monitor = Arc::new(Monitor::new(allocator.registry().clone()));
    let reclaim = monitor.clone();
    allocator.set_reclaim(Box::new(move || {
        reclaim.refresh();
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dmabufd-scan")
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime for the background scanner: {e}"))?;
    let period = std::time::Duration::from_millis(allocator.config().service.scan_interval_ms);
    runtime.spawn(monitor.clone().run(period));
    let service = DmaBufService::new(allocator.clone(), monitor);
    let binder = BnDmaBufAllocator::new_binder(service.clone());
    let guard = match &transport {
        Transport::Kernel => transport::serve_kernel(binder.as_binder()),
        Transport::Rpc(p) => transport::serve_rpc(p, binder.as_binder()),
    }
    .map_err(|e| format!("cannot serve on {transport}: {e}"))?;

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
        _runtime: runtime,
    })
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
