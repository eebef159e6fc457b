//! Instant pickup: a trigger on `jobs` (see the scheduling migration) notifies `tbw_jobs` only for what a worker acts
//! on: `queued` when a job becomes queued (inserted, released or rescued; the payload is the same for every job, so
//! PostgreSQL folds the notifications of one transaction into one), and `<id> cancelled` when the platform cancels a
//! running job. The listener wakes the poller for new work, once for however many notifications are waiting
//! (a burst of inserts becomes one poll, and a worker without room does not even ask the database), and stops a
//! job this worker runs as soon as the platform cancels it. Polling stays the fallback: a dropped connection is
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
                Ok(Some(n)) => {
                    let mut new_work = on_notification(&app, n.payload()).await;
                    // Everything already received is handled before the poller is woken, once.
                    while let Some(n) = listener.next_buffered() {
                        new_work |= on_notification(&app, n.payload()).await;
                    }
                    if new_work {
                        poke.notify_one();
                    }
                }
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

/// Handle one notification; true when it announces new work.
async fn on_notification(app: &App, payload: &str) -> bool {
    let Some((id, what)) = payload.split_once(' ') else {
        // `queued`: new work.
        return true;
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return false;
    };
    // A job held here turned `failed` while running: if the platform cancelled it, stop it now. (`failed` is what
    // the trigger of earlier versions sent for every status change.)
    if matches!(what, "cancelled" | "failed")
        && let Some(co) = &app.coordination
        && let Some((_, stop)) = co.leases.held().into_iter().find(|(c, _)| c.job_id == id)
        && let Ok(Some(job)) = db::find_job(&app.db, id).await
        && job.is_cancelled()
    {
        tracing::info!(job = %id, "the platform cancelled the job; stopping its attempts");
        stop.stop(StopReason::Cancelled);
    }
    what == "queued"
}
