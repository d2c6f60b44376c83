//! Random ids with a readable prefix: `req_…` for requests, `run_…` for delegation runs.

/// Random id with a prefix, e.g. `req_1f0c...`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}
