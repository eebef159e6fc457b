//! The artifact store: task archives come from it and attempt results go to it.
//!
//! Objects are always named by `s3://<bucket>/<key>` URLs, the form the platform writes into `jobs.zip_object_url`.
//! [`ArtifactStore::S3`] talks to S3 or an S3-compatible server; [`ArtifactStore::Local`] keeps the same layout in a
//! folder (`<root>/<bucket>/<key>`) for the embedded default, so both paths share every other line of code.

use std::path::{Component, Path, PathBuf};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::config::S3Config;

/// Bucket name the local store uses in its URLs.
pub const LOCAL_BUCKET: &str = "local";

/// Why an object could not be read or written. Messages never include credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not `s3://bucket/key`.
    #[error("the task archive location {0:?} is not an s3://bucket/key URL")]
    InvalidUrl(String),
    /// No object at that URL.
    #[error("the task archive {0} does not exist in the artifact store")]
    NotFound(String),
    /// The object is bigger than the caller allows.
    #[error("the object {url} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Object URL.
        url: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The store refused the request for good (a 4xx such as access denied or a missing bucket): retrying cannot
    /// help.
    #[error("the artifact store refused the request for {url}: {message}")]
    Rejected {
        /// Object URL (or prefix).
        url: String,
        /// What the store said.
        message: String,
    },
    /// Anything else (network, a 5xx, a timeout, local disk): possibly passing, so worth retrying.
    #[error("artifact store error for {url}: {message}")]
    Backend {
        /// Object URL (or prefix).
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed: connection failures, timeouts and 5xx (and throttling) answers are;
    /// a missing object, a refusal (4xx) or an object too large are not.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { .. })
    }
}

/// Split `s3://bucket/key` into its parts.
pub fn parse_s3_url(url: &str) -> Result<(String, String), StoreError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| StoreError::InvalidUrl(url.to_string()))?;
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(StoreError::InvalidUrl(url.to_string())),
    }
}

/// S3 through `aws-sdk-s3`.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// A folder laid out like a bucket.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// Where artifacts live.
#[derive(Clone, Debug)]
pub enum ArtifactStore {
    /// S3 or an S3-compatible server.
    S3(S3Store),
    /// A local folder (embedded default).
    Local(LocalStore),
}

impl S3Store {
    /// Build a client from the settings (no network traffic yet).
    pub fn new(cfg: &S3Config) -> S3Store {
        let credentials = Credentials::new(
            cfg.access_key_id.expose(),
            cfg.secret_access_key.expose(),
            None,
            None,
            "terminal-bench-worker-config",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(credentials);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
        }
    }

    /// The underlying client (tests use it to create buckets and list objects).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    fn path_of(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        let url = format!("s3://{bucket}/{key}");
        let relative = Path::new(bucket).join(key);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(StoreError::InvalidUrl(url));
        }
        Ok(self.root.join(relative))
    }
}

fn backend(url: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// An SDK error as a [`StoreError`]: answers with a 4xx status other than 408 (timeout) and 429 (throttling) are
/// refusals; everything else (no answer, a 5xx) may pass.
fn sdk_error<E: std::error::Error + Send + Sync + 'static>(
    url: &str,
    e: &aws_sdk_s3::error::SdkError<E>,
) -> StoreError {
    use aws_sdk_s3::error::SdkError;
    let refused = match e {
        SdkError::ConstructionFailure(_) => true,
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => e
            .raw_response()
            .map(|r| r.status().as_u16())
            .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429),
        _ => false,
    };
    if refused {
        StoreError::Rejected {
            url: url.to_string(),
            message: sdk_message(e),
        }
    } else {
        backend(url, sdk_message(e))
    }
}

fn sdk_message<E: std::error::Error + Send + Sync + 'static>(
    e: &aws_sdk_s3::error::SdkError<E>,
) -> String {
    // DisplayErrorContext walks the source chain; credentials are never part of SDK error text.
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}

impl ArtifactStore {
    /// The bucket new objects go to.
    pub fn bucket(&self) -> &str {
        match self {
            ArtifactStore::S3(s) => &s.bucket,
            ArtifactStore::Local(_) => LOCAL_BUCKET,
        }
    }

    /// `s3://<bucket>/<key>` for a key in this store's bucket.
    pub fn url_for(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket(), key)
    }

    /// Fetch an object into the file `path` (streamed, never whole in memory), refusing objects larger than `limit`
    /// bytes; returns its size.
    pub async fn get_to_file(&self, url: &str, limit: u64, path: &Path) -> Result<u64, StoreError> {
        let (bucket, key) = parse_s3_url(url)?;
        let too_large = |size| StoreError::TooLarge {
            url: url.to_string(),
            size,
            limit,
        };
        let mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match self {
            ArtifactStore::S3(s) => {
                let out = s
                    .client
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| {
                        let missing =
                            e.as_service_error().is_some_and(
                                aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key,
                            ) || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
                        if missing {
                            StoreError::NotFound(url.to_string())
                        } else {
                            sdk_error(url, &e)
                        }
                    })?;
                if let Some(size) = out.content_length().and_then(|n| u64::try_from(n).ok())
                    && size > limit
                {
                    return Err(too_large(size));
                }
                Box::new(out.body.into_async_read())
            }
            ArtifactStore::Local(l) => {
                let source = l.path_of(&bucket, &key)?;
                match tokio::fs::metadata(&source).await {
                    Ok(m) if m.is_file() && m.len() > limit => return Err(too_large(m.len())),
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Err(StoreError::NotFound(url.to_string())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::NotFound(url.to_string()));
                    }
                    Err(e) => return Err(backend(url, e)),
                }
                Box::new(
                    tokio::fs::File::open(&source)
                        .await
                        .map_err(|e| backend(url, e))?,
                )
            }
        };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| backend(url, e))?;
        // One byte past the limit is enough to know it is exceeded, whatever the headers said.
        let written = tokio::io::copy(
            &mut tokio::io::AsyncReadExt::take(&mut reader, limit.saturating_add(1)),
            &mut file,
        )
        .await
        .map_err(|e| backend(url, e))?;
        if written > limit {
            return Err(too_large(written));
        }
        Ok(written)
    }

    /// Write an object under `key` in this store's bucket; returns its URL.
    pub async fn put(
        &self,
        key: &str,
        data: Bytes,
        content_type: &str,
    ) -> Result<String, StoreError> {
        let url = self.url_for(key);
        match self {
            ArtifactStore::S3(s) => {
                s.client
                    .put_object()
                    .bucket(&s.bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| sdk_error(&url, &e))?;
            }
            ArtifactStore::Local(l) => {
                let path = l.path_of(LOCAL_BUCKET, key)?;
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| backend(&url, e))?;
                }
                tokio::fs::write(&path, &data)
                    .await
                    .map_err(|e| backend(&url, e))?;
            }
        }
        Ok(url)
    }

    /// Write the file at `path` as an object under `key`, streamed from disk (never the whole file in memory);
    /// returns its URL.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        content_type: &str,
    ) -> Result<String, StoreError> {
        let url = self.url_for(key);
        match self {
            ArtifactStore::S3(s) => {
                // Read a buffer at a time as the request goes out; the length is known, so one PUT carries it.
                let body = ByteStream::from_path(path)
                    .await
                    .map_err(|e| backend(&url, e))?;
                s.client
                    .put_object()
                    .bucket(&s.bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| sdk_error(&url, &e))?;
            }
            ArtifactStore::Local(l) => {
                let target = l.path_of(LOCAL_BUCKET, key)?;
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| backend(&url, e))?;
                }
                let mut from = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| backend(&url, e))?;
                let mut to = tokio::fs::File::create(&target)
                    .await
                    .map_err(|e| backend(&url, e))?;
                tokio::io::copy(&mut from, &mut to)
                    .await
                    .map_err(|e| backend(&url, e))?;
            }
        }
        Ok(url)
    }

    /// Upload every regular file under `dir` to `prefix` + its relative path (symbolic links are skipped), at most
    /// `concurrency` at a time, each streamed from disk. Returns the number of files uploaded.
    pub async fn put_dir(
        &self,
        dir: &Path,
        prefix: &str,
        concurrency: usize,
    ) -> Result<usize, StoreError> {
        let prefix = prefix.trim_end_matches('/');
        let mut uploads = Vec::new();
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = entry.map_err(|e| backend(&self.url_for(prefix), e))?;
            if entry.file_type().is_file() {
                let path = entry.into_path();
                let relative = path
                    .strip_prefix(dir)
                    .map_err(|e| backend(&self.url_for(prefix), e))?;
                let key = format!("{prefix}/{}", relative.to_string_lossy().replace('\\', "/"));
                uploads.push((key, path));
            }
        }
        let count = uploads.len();
        futures::stream::iter(uploads)
            .map(|(key, path)| async move {
                self.put_file(&key, &path, content_type_for(&path)).await
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        Ok(count)
    }
}

pub(crate) fn content_type_for(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("txt" | "log" | "sh" | "md") => "text/plain; charset=utf-8",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_key() {
        assert_eq!(
            parse_s3_url("s3://b/tasks/x.zip").unwrap(),
            ("b".into(), "tasks/x.zip".into())
        );
        assert!(parse_s3_url("https://b/x").is_err());
        assert!(parse_s3_url("s3://b/").is_err());
        assert!(parse_s3_url("s3://b").is_err());
    }

    #[tokio::test]
    async fn local_store_round_trips_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::Local(LocalStore::new(dir.path()));
        let url = store
            .put("tasks/a.zip", Bytes::from_static(b"abc"), "application/zip")
            .await
            .unwrap();
        assert_eq!(url, "s3://local/tasks/a.zip");
        let copy = dir.path().join("copy.zip");
        assert_eq!(store.get_to_file(&url, 10, &copy).await.unwrap(), 3);
        assert_eq!(std::fs::read(&copy).unwrap(), b"abc");
        assert!(matches!(
            store
                .get_to_file("s3://local/tasks/none.zip", 10, &copy)
                .await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store
                .get_to_file("s3://local/../../etc/passwd", 10, &copy)
                .await,
            Err(StoreError::InvalidUrl(_))
        ));
        assert!(matches!(
            store.get_to_file(&url, 2, &copy).await,
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn local_store_uploads_a_folder_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let trial = dir.path().join("trial");
        std::fs::create_dir_all(trial.join("agent")).unwrap();
        std::fs::write(trial.join("result.json"), "{}").unwrap();
        std::fs::write(trial.join("agent/oracle.txt"), vec![b'x'; 300_000]).unwrap();
        let store = ArtifactStore::Local(LocalStore::new(dir.path().join("store")));
        assert_eq!(
            store
                .put_dir(&trial, "results/j/attempt-0", 2)
                .await
                .unwrap(),
            2
        );
        let copy = dir.path().join("oracle.txt");
        let size = store
            .get_to_file(
                "s3://local/results/j/attempt-0/agent/oracle.txt",
                1 << 20,
                &copy,
            )
            .await
            .unwrap();
        assert_eq!(size, 300_000);
        assert_eq!(std::fs::read(&copy).unwrap(), vec![b'x'; 300_000]);
    }
}
