//! Instant pickup: a trigger on `jobs` (see the worker-tables migration) sends `NOTIFY tbw_jobs '<id> <status>'` on
//! every insert and status change. The listener wakes the poller at once for new or freed work, and stops a job
//! this worker runs as soon as the platform cancels it. Polling stays the fallback: a dropped connection is
//! re-established (with a poll right after, for anything missed meanwhile).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::App;
use crate::db;
use crate::stop::StopReason;

/// The channel the trigger notifies.
pub const CHANNEL: &str = "tbw_jobs";

/// Listen until `shutdown`; `poke` wakes the poller.
pub async fn run(app: App, url: String, poke: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let mut listener = match connect(&url).await {
            Ok(l) => {
                backoff = Duration::from_millis(200);
                tracing::info!(channel = CHANNEL, "listening for job notifications");
                poke.notify_one(); // anything that happened while not listening
                l
            }
            Err(e) => {
                tracing::warn!(error = %crate::fmt::chain(&e), retry_ms = backoff.as_millis() as u64, "cannot listen for job notifications; polling meanwhile");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(n)) => on_notification(&app, n.payload(), &poke).await,
                Ok(None) => {
                    tracing::warn!("the notification connection was lost; reconnecting");
                    poke.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %crate::fmt::chain(&e), "listening for job notifications failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn on_notification(app: &App, payload: &str, poke: &Notify) {
    let Some((id, status)) = payload.split_once(' ') else {
        return;
    };
    let Ok(id) = id.parse::<Uuid>() else { return };
    // A job held here turned `failed` while running: if the platform cancelled it, stop it now.
    if status == "failed"
        && let Some(co) = &app.coordination
        && let Some((_, stop)) = co.leases.held().into_iter().find(|(c, _)| c.job_id == id)
        && let Ok(Some(job)) = db::find_job(&app.db, id).await
        && job.is_cancelled()
    {
        tracing::info!(job = %id, "the platform cancelled the job; stopping its attempts");
        stop.stop(StopReason::Cancelled);
    }
    // New work (`queued`) or a freed slot (any other change) may let a waiting job start.
    poke.notify_one();
}
