//! Submit a task the way the web application does: upload the zip to `tasks/<timestamp>-0-<name>.zip` and insert a
//! `queued` job that points at it.

use std::path::Path;

use bytes::Bytes;
use entity::{job, user};
use eyre::{WrapErr, bail, eyre};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::app::App;
use crate::db;
use crate::task;

/// Find a user by email or id; an unknown user is an error (jobs reference existing users only).
pub async fn resolve_user(app: &App, who: &str) -> eyre::Result<Uuid> {
    let found = match Uuid::parse_str(who) {
        Ok(id) => user::Entity::find_by_id(id).one(&app.db).await?,
        Err(_) => {
            user::Entity::find()
                .filter(user::Column::Email.eq(who))
                .one(&app.db)
                .await?
        }
    };
    found
        .map(|u| u.id)
        .ok_or_else(|| eyre!("no user {who:?} in the users table"))
}

/// The job metadata the platform writes for a chosen agent and model (`{"agent": .., "model": ..}`), checking the
/// agent's name so a typo fails here rather than in the worker.
pub fn job_metadata(agent: Option<&str>, model: Option<&str>) -> eyre::Result<serde_json::Value> {
    let mut metadata = serde_json::Map::new();
    if let Some(agent) = agent {
        let known = [
            crate::attempt::agent::ORACLE,
            crate::attempt::terminus::TERMINUS_2,
        ];
        if !known.contains(&agent) {
            bail!("--agent must be one of {}, got {agent:?}", known.join(", "));
        }
        metadata.insert("agent".into(), agent.into());
    }
    if let Some(model) = model {
        metadata.insert("model".into(), model.into());
    }
    Ok(serde_json::Value::Object(metadata))
}

/// Upload a task folder or zip and queue a job for it.
pub async fn submit(
    app: &App,
    path: &Path,
    runs: i32,
    owner: Option<Uuid>,
) -> eyre::Result<job::Model> {
    submit_with_metadata(app, path, runs, owner, serde_json::json!({})).await
}

/// [`submit`] with the job's `metadata` (e.g. from [`job_metadata`]), written in the same insert as the job so no
/// worker can claim it without.
pub async fn submit_with_metadata(
    app: &App,
    path: &Path,
    runs: i32,
    owner: Option<Uuid>,
    metadata: serde_json::Value,
) -> eyre::Result<job::Model> {
    let (name, bytes) = if path.is_dir() {
        let dir = path
            .canonicalize()
            .wrap_err_with(|| format!("cannot read {}", path.display()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into());
        let data = tokio::task::spawn_blocking(move || task::zip_dir(&dir)).await??;
        (name, data)
    } else if path.is_file() {
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "task".into());
        (
            name,
            tokio::fs::read(path)
                .await
                .wrap_err_with(|| format!("cannot read {}", path.display()))?,
        )
    } else {
        bail!("{} is neither a task folder nor a zip file", path.display());
    };
    let key = format!(
        "tasks/{}-0-{}.zip",
        chrono::Utc::now().timestamp_millis(),
        name
    );
    let url = app
        .store
        .put(&key, Bytes::from(bytes), "application/zip")
        .await?;
    let job = db::insert_job_with_metadata(&app.db, &name, runs, &url, owner, metadata).await?;
    Ok(job)
}
