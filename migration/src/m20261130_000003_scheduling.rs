//! Scheduling that stays flat as the backlog grows (PostgreSQL only; the embedded SQLite default runs one process
//! and needs none of it):
//!
//! - `tbw_jobs_queued_owner_idx`: a partial index over queued jobs by owner key (`COALESCE(owner_id, id)`: a job
//!   without an owner is its own owner) and age, so an owner's oldest queued job is one index probe and the set of
//!   owners with queued jobs is a skip scan, never a scan of the backlog.
//! - `tbw_owners`: one row per owner with queued or running jobs: the number of its running claims (the per-owner
//!   limit is checked on this row, which a claim locks `FOR UPDATE SKIP LOCKED`, so two claims for one owner never
//!   both pass it) and `turn_at`, the owner's place in the fair order (when it was last served, or when its first
//!   job was queued if it was not served since), indexed so a claim walks owners in that order without sorting
//!   them. A row is added by the trigger below when a job of the owner becomes `queued` (`turn_at` = that job's
//!   creation, or the owner's last turn if later); a claim sets `turn_at` when it serves the owner, and a trigger
//!   on `tbw_owner_turns` keeps it equal to the turn recorded there. The worker prunes rows of owners with nothing
//!   queued or running.
//! - `tbw_slots`: numbered rows, one per job that may run at once (`MAX_CONCURRENT_JOBS` of them are used); a claim
//!   takes a free one `FOR UPDATE SKIP LOCKED`, so the global limit needs no global lock.
//! - A trigger on `tbw_claims` frees the slot and the owner's running count whenever a live claim ends (finish,
//!   release, rescue, cancellation, or the job's deletion): every path that ends a claim already bumps its epoch or
//!   clears its worker, so none of them can forget to give the slot back.
//! - The `jobs` trigger notifies only for what a worker acts on: a job became `queued` (payload `queued`, identical
//!   within a transaction so PostgreSQL folds a burst into one notification), and a running job cancelled by the
//!   platform (`<id> cancelled`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS tbw_jobs_queued_owner_idx ON jobs ((COALESCE(owner_id, id)), created_at, id)
        WHERE status = 'queued'",
    "CREATE INDEX IF NOT EXISTS tbw_jobs_running_idx ON jobs (owner_id) WHERE status = 'running'",
    "CREATE TABLE IF NOT EXISTS tbw_owners (
        owner_key uuid PRIMARY KEY,
        running integer NOT NULL DEFAULT 0,
        turn_at timestamptz NOT NULL DEFAULT '-infinity'
    )",
    "CREATE INDEX IF NOT EXISTS tbw_owners_turn_idx ON tbw_owners (turn_at, owner_key)",
    "CREATE TABLE IF NOT EXISTS tbw_slots (
        slot integer PRIMARY KEY,
        job_id uuid,
        epoch bigint,
        owner_key uuid,
        worker_id uuid
    )",
    "CREATE INDEX IF NOT EXISTS tbw_slots_job_idx ON tbw_slots (job_id) WHERE job_id IS NOT NULL",
    // Claims live before this migration hold slots and count for their owners, numbered from 1.
    "INSERT INTO tbw_slots (slot, job_id, epoch, owner_key, worker_id)
        SELECT row_number() OVER (ORDER BY c.claimed_at, c.job_id), c.job_id, c.epoch, COALESCE(j.owner_id, j.id),
               c.worker_id
        FROM tbw_claims c JOIN jobs j ON j.id = c.job_id
        WHERE c.worker_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tbw_slots)",
    "INSERT INTO tbw_owners (owner_key, running)
        SELECT owner_key, count(*) FROM tbw_slots WHERE job_id IS NOT NULL GROUP BY owner_key
        ON CONFLICT (owner_key) DO NOTHING",
    "INSERT INTO tbw_owners (owner_key)
        SELECT DISTINCT COALESCE(owner_id, id) FROM jobs WHERE status = 'queued'
        ON CONFLICT (owner_key) DO NOTHING",
    "UPDATE tbw_owners o SET turn_at = GREATEST(
        COALESCE((SELECT t.last_served_at FROM tbw_owner_turns t WHERE t.owner_key = o.owner_key), '-infinity'),
        COALESCE((SELECT min(j.created_at) FROM jobs j
                  WHERE COALESCE(j.owner_id, j.id) = o.owner_key AND j.status = 'queued'), '-infinity'))",
    "CREATE OR REPLACE FUNCTION tbw_owner_served() RETURNS trigger AS $$
     BEGIN
        UPDATE tbw_owners SET turn_at = NEW.last_served_at
        WHERE owner_key = NEW.owner_key AND turn_at IS DISTINCT FROM NEW.last_served_at;
        RETURN NULL;
     END
     $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS tbw_owner_turns_served ON tbw_owner_turns",
    "CREATE TRIGGER tbw_owner_turns_served AFTER INSERT OR UPDATE ON tbw_owner_turns
        FOR EACH ROW EXECUTE FUNCTION tbw_owner_served()",
    "CREATE OR REPLACE FUNCTION tbw_claim_ended() RETURNS trigger AS $$
     DECLARE
        freed_owner uuid;
     BEGIN
        IF TG_OP = 'DELETE' OR NEW.worker_id IS NULL OR NEW.worker_id <> OLD.worker_id OR NEW.epoch <> OLD.epoch THEN
            UPDATE tbw_slots s SET job_id = NULL, epoch = NULL, owner_key = NULL, worker_id = NULL
            FROM (SELECT slot, owner_key FROM tbw_slots WHERE job_id = OLD.job_id AND epoch = OLD.epoch) prev
            WHERE s.slot = prev.slot
            RETURNING prev.owner_key INTO freed_owner;
            IF freed_owner IS NOT NULL THEN
                UPDATE tbw_owners SET running = GREATEST(running - 1, 0) WHERE owner_key = freed_owner;
            END IF;
        END IF;
        RETURN NULL;
     END
     $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS tbw_claims_ended ON tbw_claims",
    "CREATE TRIGGER tbw_claims_ended AFTER UPDATE OR DELETE ON tbw_claims
        FOR EACH ROW WHEN (OLD.worker_id IS NOT NULL) EXECUTE FUNCTION tbw_claim_ended()",
    "CREATE OR REPLACE FUNCTION tbw_notify_job() RETURNS trigger AS $$
     BEGIN
        IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'queued') THEN
            INSERT INTO tbw_owners (owner_key, turn_at)
                SELECT COALESCE(NEW.owner_id, NEW.id), GREATEST(NEW.created_at, COALESCE(
                    (SELECT last_served_at FROM tbw_owner_turns WHERE owner_key = COALESCE(NEW.owner_id, NEW.id)),
                    '-infinity'))
                ON CONFLICT (owner_key) DO NOTHING;
            PERFORM pg_notify('tbw_jobs', 'queued');
        ELSIF TG_OP = 'UPDATE' AND OLD.status = 'running' AND NEW.status = 'failed'
              AND lower(coalesce(NEW.error_message, '')) LIKE '%cancelled%' THEN
            PERFORM pg_notify('tbw_jobs', NEW.id::text || ' cancelled');
        END IF;
        RETURN NULL;
     END
     $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS tbw_jobs_notify ON jobs",
    "CREATE TRIGGER tbw_jobs_notify AFTER INSERT OR UPDATE OF status ON jobs
        FOR EACH ROW EXECUTE FUNCTION tbw_notify_job()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let conn = manager.get_connection();
        for statement in POSTGRES {
            conn.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
