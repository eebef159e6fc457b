//! SeaORM entities for the evaluation platform's tables (`users`, `jobs`, `attempts`, `episodes`).
//!
//! The web application created these tables first; the entities map them column for column, and the status enums
//! carry the platform's exact string values. This crate depends on nothing of the worker.
//!
//! ```
//! use entity::job::JobStatus;
//! assert_eq!(JobStatus::Queued.as_str(), "queued");
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod attempt;
pub mod episode;
pub mod job;
pub mod user;

pub use attempt::Entity as Attempt;
pub use episode::Entity as Episode;
pub use job::Entity as Job;
pub use user::Entity as User;
