//! Migrations for the worker's database: they create the platform's tables where they are missing and leave them
//! alone where the web application already created them, then add the worker's own indexes.
//!
//! Every statement is idempotent (`IF NOT EXISTS`), so `Migrator::up` runs cleanly on an empty database and on one
//! the platform's own migrations already populated. The worker never drops or renames platform columns.
//!
//! ```no_run
//! # async fn f(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::DbErr> {
//! use migration::{Migrator, MigratorTrait};
//! Migrator::up(db, None).await?;
//! # Ok(()) }
//! ```
#![allow(
    elided_lifetimes_in_paths,
    reason = "MigrationTrait is an async_trait: naming `SchemaManager<'_>` makes the impl's lifetimes differ from the trait's"
)]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_platform_tables;
mod m20261129_000002_worker_tables;
mod m20261130_000003_scheduling;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_platform_tables::Migration),
            Box::new(m20261129_000002_worker_tables::Migration),
            Box::new(m20261130_000003_scheduling::Migration),
        ]
    }
}

/// Run each `;`-separated statement of `sql` (statements hold no semicolons of their own).
pub(crate) async fn execute_script(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        conn.execute_unprepared(statement).await?;
    }
    Ok(())
}
