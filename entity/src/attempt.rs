//! `attempts`: one run of the agent on the task, graded by the task's tests.
#![allow(missing_docs)]

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Attempt lifecycle, with the platform's string values. `success` only when tests ran and all passed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "running")]
    Running,
    #[sea_orm(string_value = "success")]
    Success,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl AttemptStatus {
    /// The platform's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Queued => "queued",
            AttemptStatus::Running => "running",
            AttemptStatus::Success => "success",
            AttemptStatus::Failed => "failed",
        }
    }
}

/// The platform's `metadata.errorType` values: why a failed attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorType {
    /// The model's API refused for rate limits.
    RateLimitError,
    /// The attempt (or its agent) ran out of time.
    TimeoutError,
    /// The job was cancelled.
    CancellationError,
    /// Anything else that went wrong running the attempt.
    ExecutionError,
    /// The worker's infrastructure failed under the attempt (the container runtime was unreachable or restarted,
    /// its disk was full), not the task or the agent; retried first, and never counted in `runs_completed`.
    InfrastructureError,
}

impl ErrorType {
    /// The platform's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::RateLimitError => "RateLimitError",
            ErrorType::TimeoutError => "TimeoutError",
            ErrorType::CancellationError => "CancellationError",
            ErrorType::ExecutionError => "ExecutionError",
            ErrorType::InfrastructureError => "InfrastructureError",
        }
    }

    /// Whose failure an error of this type is, as `metadata.failureClass`: `infrastructure` (the worker's, see
    /// [`ErrorType::InfrastructureError`]), `cancelled` (the job was cancelled), or `agent` (the attempt's own doing:
    /// the task's or the agent's commands failed, timed out, or the tests failed).
    pub fn failure_class(self) -> &'static str {
        match self {
            ErrorType::InfrastructureError => "infrastructure",
            ErrorType::CancellationError => "cancelled",
            ErrorType::RateLimitError | ErrorType::TimeoutError | ErrorType::ExecutionError => {
                "agent"
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub job_id: Uuid,
    pub index: i32,
    pub status: AttemptStatus,
    pub tests_passed: i32,
    pub tests_total: i32,
    pub started_at: Option<DateTimeWithTimeZone>,
    pub finished_at: Option<DateTimeWithTimeZone>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub reward_summary: Option<Json>,
    pub log_path: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::job::Entity",
        from = "Column::JobId",
        to = "super::job::Column::Id",
        on_delete = "Cascade"
    )]
    Job,
    #[sea_orm(has_many = "super::episode::Entity")]
    Episodes,
}

impl Related<super::job::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Job.def()
    }
}

impl Related<super::episode::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Episodes.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
