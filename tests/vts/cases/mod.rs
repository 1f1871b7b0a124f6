//! The cases, by topic. Each function proves one thing and is named after it.

use crate::harness::Case;

mod isolation;

/// Every case, in the order they run (cheap isolation checks first).
pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(isolation::cases());
    cases
}
