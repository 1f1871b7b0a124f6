//! Runs the cases one after another, each isolated by `catch_unwind`, and
//! prints `PASS name` / `FAIL name: why` and the `N passed, N failed` summary.

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

/// Where the last panic happened, for the FAIL line.
static PANIC_AT: Mutex<Option<String>> = Mutex::new(None);

/// What a case returns: `Err(why)` fails it, as does a panic.
pub type Outcome = Result<(), String>;

pub struct Case {
    pub name: &'static str,
    pub run: fn() -> Outcome,
}

/// Fails the current case with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// Runs every case whose name contains one of `filter` (all when empty).
pub fn run(cases: Vec<Case>, filter: &[String]) -> ExitCode {
    // Panic messages become the FAIL reason instead of going to stderr.
    panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        *PANIC_AT.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }));
    let (mut passed, mut failed) = (0usize, 0usize);
    for case in cases
        .iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name.contains(f.as_str())))
    {
        let start = Instant::now();
        let outcome = match panic::catch_unwind(AssertUnwindSafe(case.run)) {
            Ok(outcome) => outcome,
            Err(payload) => {
                let at = PANIC_AT.lock().unwrap_or_else(|e| e.into_inner()).take();
                Err(format!(
                    "panicked at {}: {}",
                    at.as_deref().unwrap_or("?"),
                    panic_message(&payload)
                ))
            }
        };
        let ms = start.elapsed().as_millis();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {} ({ms} ms)", case.name);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why} ({ms} ms)", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}
