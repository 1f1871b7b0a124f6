//! Memory pressure for the reserve pools: a PSI trigger on
//! `/proc/pressure/memory` (the kernel wakes a `poll` with POLLPRI when the
//! stall threshold is crossed within the window) and a `MemAvailable` low
//! watermark, read a few times a second on this thread (never on the
//! allocation path). Either drains every pool to zero
//! ([`Pools::drain`]); the pools refill once pressure has been gone for
//! their quiet period.
//!
//! The trigger is written at start-up while the service is still root: an
//! unprivileged writer may only use windows of whole multiples of 2 s, and
//! the trigger lives as long as the open file, across the privilege drop.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use crate::pool::Pools;

/// The PSI file of memory stalls.
pub const PSI_MEMORY: &str = "/proc/pressure/memory";
/// How often MemAvailable is read (and the longest poll).
pub const CHECK_PERIOD: Duration = Duration::from_millis(100);

/// Reads MemAvailable in bytes (None: unreadable).
pub type AvailableSource = Box<dyn Fn() -> Option<u64> + Send>;

/// The watcher's inputs, opened at start-up.
pub struct PressureWatch {
    psi: Option<File>,
    trigger: String,
    min_available: u64,
    available: AvailableSource,
}

impl PressureWatch {
    /// Opens the PSI trigger `trigger` (empty: none) and watches
    /// MemAvailable against `min_available` (0: not). Returns the watch and
    /// one line for the start-up log saying what is watched.
    pub fn open(trigger: &str, min_available: u64) -> (PressureWatch, String) {
        let (psi, psi_note) = if trigger.is_empty() {
            (
                None,
                "no PSI trigger (pools.psi_trigger is empty)".to_string(),
            )
        } else {
            match open_trigger(PSI_MEMORY, trigger) {
                Ok(f) => (Some(f), format!("PSI trigger {trigger:?} on {PSI_MEMORY}")),
                Err(e) => (
                    None,
                    format!(
                        "no PSI trigger: {PSI_MEMORY}: {e} (a kernel without PSI, or booted \
                         with psi=0)"
                    ),
                ),
            }
        };
        let note = if min_available > 0 {
            format!("{psi_note}; MemAvailable watermark {min_available} bytes")
        } else {
            format!("{psi_note}; no MemAvailable watermark")
        };
        (
            PressureWatch {
                psi,
                trigger: trigger.to_string(),
                min_available,
                available: Box::new(|| {
                    std::fs::read_to_string(crate::allocator::MEMINFO)
                        .ok()
                        .and_then(|t| crate::allocator::mem_available(&t))
                }),
            },
            note,
        )
    }

    /// The reason to drain now, if any: waits up to [`CHECK_PERIOD`] for
    /// the PSI trigger, then reads MemAvailable.
    fn check(&mut self) -> Option<String> {
        if let Some(f) = &self.psi {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
            match poll(&mut fds, PollTimeout::from(CHECK_PERIOD.as_millis() as u16)) {
                Ok(n) if n > 0 => {
                    let ev = fds[0].revents().unwrap_or(PollFlags::empty());
                    if ev.contains(PollFlags::POLLERR) {
                        log::warn!(
                            "PSI trigger on {PSI_MEMORY} failed (POLLERR); MemAvailable only"
                        );
                        self.psi = None;
                    } else if ev.contains(PollFlags::POLLPRI) {
                        return Some(format!("PSI memory stall crossed {:?}", self.trigger));
                    }
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::warn!("poll of {PSI_MEMORY}: {e}; MemAvailable only");
                    self.psi = None;
                }
            }
        } else {
            std::thread::sleep(CHECK_PERIOD);
        }
        if self.min_available > 0 {
            if let Some(avail) = (self.available)() {
                if avail < self.min_available {
                    return Some(format!(
                        "MemAvailable {avail} bytes below pools.min_available {} bytes",
                        self.min_available
                    ));
                }
            }
        }
        None
    }

    /// Watches until `pools` is dropped by everyone else.
    pub fn run(mut self, pools: std::sync::Weak<Pools>) {
        loop {
            let why = self.check();
            let Some(p) = pools.upgrade() else { return };
            if let Some(why) = why {
                p.drain(&why);
            }
        }
    }

    /// Starts [`run`](Self::run) on a thread of its own.
    pub fn spawn(self, pools: &Arc<Pools>) -> std::io::Result<()> {
        let weak = Arc::downgrade(pools);
        std::thread::Builder::new()
            .name("dmabufd-pressure".into())
            .spawn(move || self.run(weak))
            .map(|_| ())
    }
}

/// Opens `path` and writes `trigger` to it: the file then polls POLLPRI
/// when the threshold is crossed.
fn open_trigger(path: &str, trigger: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)?;
    // The kernel wants the trigger with its NUL.
    let mut line = trigger.as_bytes().to_vec();
    line.push(0);
    f.write_all(&line)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{plan, HeapLimit, PoolConfig, Pooled};
    use crate::scan::BufferKey;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn memavailable_below_the_watermark_drains_the_pools() {
        let v: toml::Value = toml::from_str(
            "[pools]\nrefill_delay_ms = 0\n[pools.system]\nclasses = [{ size = \"4K\", count = 2 }]",
        )
        .unwrap();
        let c = PoolConfig::from_toml(&v["pools"]).unwrap();
        let heaps = [HeapLimit {
            name: "system",
            max_size: 1 << 20,
        }];
        let pools = Arc::new(Pools::new(
            plan(&c, &heaps, |n| Some(n.to_string())).unwrap(),
            &c,
        ));
        let make: crate::pool::Maker = Box::new(|_, size| {
            let fd =
                crate::heap::memfd::sealed_memfd("p", size, nix::fcntl::SealFlag::empty()).unwrap();
            let ino = nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino;
            Ok(Pooled {
                fd,
                key: BufferKey::memfd(ino),
            })
        });
        while let crate::pool::Next::Fill(_) = pools.step(&make) {}
        assert_eq!(pools.held().0, 2);
        let avail = Arc::new(AtomicU64::new(1 << 30));
        let a = avail.clone();
        let mut w = PressureWatch {
            psi: None,
            trigger: String::new(),
            min_available: 100 << 20,
            available: Box::new(move || Some(a.load(Ordering::SeqCst))),
        };
        assert_eq!(w.check(), None);
        avail.store(50 << 20, Ordering::SeqCst);
        let why = w.check().expect("below the watermark");
        assert!(why.contains("MemAvailable 52428800"), "{why}");
        pools.drain(&why);
        assert_eq!(pools.held(), (0, 0));
    }

    #[test]
    fn a_missing_psi_file_is_a_note_not_a_failure() {
        let e = open_trigger("/nonexistent/pressure", "some 150000 1000000").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        let (_w, note) = PressureWatch::open("", 0);
        assert!(
            note.contains("no PSI trigger") && note.contains("no MemAvailable"),
            "{note}"
        );
    }
}
