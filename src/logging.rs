//! `log` facade set-up: logcat through android_logger on Android, stderr elsewhere.

#[cfg(target_os = "android")]
pub fn init(tag: &'static str, verbose: bool) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    android_logger::init_once(
        android_logger::Config::default()
            .with_tag(tag)
            .with_max_level(level),
    );
}

#[cfg(not(target_os = "android"))]
pub fn init(tag: &'static str, verbose: bool) {
    let level = match std::env::var("DMABUFD_LOG").ok().as_deref() {
        Some("debug") => log::LevelFilter::Debug,
        Some("warn") => log::LevelFilter::Warn,
        Some("error") => log::LevelFilter::Error,
        _ if verbose => log::LevelFilter::Debug,
        _ => log::LevelFilter::Info,
    };
    // A second init (tests, demo children) keeps the first logger.
    if log::set_boxed_logger(Box::new(StderrLogger { tag })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(not(target_os = "android"))]
struct StderrLogger {
    tag: &'static str,
}

#[cfg(not(target_os = "android"))]
impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level() && !m.target().starts_with("rsbinder")
            || m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "{}[{}] {}: {}",
                self.tag,
                std::process::id(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}
