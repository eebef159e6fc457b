//! Many workers, one database: claims, leases, fencing and rescue, in the worker's own tables (`tbw_claims`,
//! `tbw_workers`, `tbw_owner_turns`). PostgreSQL only; the embedded default (SQLite, one process) claims by a
//! conditional status update alone.
//!
//! - **Claim** ([`claim()`]): one transaction under a transaction-scoped advisory lock, so claims from every worker
//!   process are serialized: the job must still be `queued`, the global number of `running` jobs must be under
//!   `MAX_CONCURRENT_JOBS`, the owner's under `MAX_ACTIVE_JOBS_PER_USER`, and the owner must be the one that has
//!   waited longest since it was last served among owners with an admissible queued job. The claim bumps the job's
//!   **epoch** (the fencing token) and records the owner's turn.
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

pub use claim::{Limits, Refused, claim};
pub use lease::{Leases, heartbeat, release};
pub use registry::{KnownWorker, gone_workers, known_workers, register_worker, worker_stopped};
pub use rescue::{Rescued, end_cancelled_orphans, release_orphans, rescue_expired};

pub use crate::fence::{Claim, FenceError, LeaseLost, check_fence, let_go};

/// Key of the advisory lock that serializes claims and rescues across worker processes.
const CLAIM_LOCK: i64 = 0x7462_775f_636c_6169;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
