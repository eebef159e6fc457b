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

/// Upload a task folder or zip and queue a job for it.
pub async fn submit(
    app: &App,
    path: &Path,
    runs: i32,
    owner: Option<Uuid>,
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
    let job = db::insert_job(&app.db, &name, runs, &url, owner).await?;
    Ok(job)
}
