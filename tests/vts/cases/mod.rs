//! The cases, by topic. Each function proves one thing and is named after
//! it; app roles are the parts of cases that run inside app processes.

use crate::app::Role;
use crate::harness::Case;

mod alloc;
mod bpf;
mod errors;
mod exact;
mod fuzz;
mod isolation;
pub mod lifecycle;
mod load;
mod memtrack;
mod paging;
mod reports;
mod stress;

/// Every case, in the order they run: isolation first (cheap, and the rest
/// depends on it), the error coverage check after the error cases.
pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(isolation::cases());
    cases.extend(alloc::cases());
    cases.extend(errors::cases());
    cases.extend(lifecycle::cases());
    cases.extend(reports::cases());
    cases.extend(memtrack::cases());
    cases.extend(paging::cases());
    cases.extend(errors::coverage_cases());
    cases.extend(fuzz::cases());
    cases.extend(stress::cases());
    cases.extend(bpf::cases());
    cases.extend(exact::cases());
    cases.extend(load::cases());
    // Last: it kills and restarts the service.
    cases.extend(exact::restart_cases());
    // Last too: it kills apps and the service mid-load and restarts it.
    cases.extend(load::chaos_cases());
    cases
}

/// The app role called `name` (for `vts --app NAME ...`).
pub fn app_role(name: &str) -> Option<Role> {
    [
        isolation::roles(),
        alloc::roles(),
        errors::roles(),
        lifecycle::roles(),
        reports::roles(),
        memtrack::roles(),
        stress::roles(),
        bpf::roles(),
        exact::roles(),
        load::roles(),
    ]
    .into_iter()
    .flatten()
    .find(|(n, _)| *n == name)
    .map(|(_, role)| role)
}
