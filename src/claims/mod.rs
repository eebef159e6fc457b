//! Many workers, one database: claims, leases, fencing and rescue, in the worker's own tables (`tbw_claims`,
//! `tbw_workers`, `tbw_owner_turns`, `tbw_owners`, `tbw_slots`). PostgreSQL only; the embedded default (SQLite, one process) claims by a
//! conditional status update alone.
//!
//! - **Claim** ([`claim_next`], in `claim.rs`): one statement picks the next job in fair order (the owner that has
//!   waited longest since it was last served, among owners with a queued job and room under
//!   `MAX_ACTIVE_JOBS_PER_USER`; then that owner's oldest job), takes a free global slot (`MAX_CONCURRENT_JOBS`
//!   slot rows), and claims it. Rows other claimers hold are skipped (`FOR UPDATE SKIP LOCKED`), so workers never
//!   wait for or refuse one another. The claim bumps the job's **epoch** (the fencing token) and records the owner's
//!   turn. [`claim()`] claims one named job under the same rules and says why when it cannot.
//! - **Lease**: every claim expires `WORKER_LEASE_SECS` after its last renewal; [`heartbeat`] renews all of a worker's
//!   claims and reports those it no longer holds.
//! - **Fencing** ([`check_fence`], in [`crate::fence`]): every later write for a job runs in a transaction that first
//!   locks the claim row `FOR SHARE` and checks worker and epoch, so a worker that lost its lease cannot overwrite
//!   the new owner's work.
//! - **Rescue** ([`rescue_expired`]): a `running` job whose lease expired goes back to `queued` (its unfinished
//!   attempts too; finished ones are kept), at most `MAX_JOB_RESCUES` times; after that it fails with a message.
//! - **Registry**: every worker process has a `tbw_workers` row with its heartbeat, so containers of workers that are
//!   gone can be swept.
//!
//! One concern per file: `claim.rs`, `lease.rs`, `rescue.rs`, `registry.rs`; everything is re-exported here.

mod claim;
mod lease;
mod registry;
mod rescue;

use std::time::Duration;

pub use claim::{
    Claimed, Limits, Refused, claim, claim_batch, claim_next, ensure_slots, tidy_owners,
};
pub use lease::{Leases, heartbeat, release};
pub use registry::{KnownWorker, gone_workers, known_workers, register_worker, worker_stopped};
pub use rescue::{Rescued, end_cancelled_orphans, release_orphans, rescue_expired};

pub use crate::fence::{Claim, FenceError, LeaseLost, check_fence, let_go};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
