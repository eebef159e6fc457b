//! Files into and out of a container as tar streams through the Docker API (no host mounts, so a remote daemon works
//! too). What comes out is untrusted: only regular files and folders are written, never outside the destination.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};
use tokio_util::io::{ReaderStream, StreamReader, SyncIoBridge};

use super::is_not_found;
use crate::runtime::budget::CopyBudget;
use crate::runtime::packed::{self, PackedDir};
use crate::runtime::{RuntimeError, blocking};

/// Copies the host folder `host_dir` to the absolute path `target` in the container, through a tar in a temporary
/// file (never the whole archive in memory).
pub(super) async fn copy_dir_in(
    docker: &Docker,
    id: &str,
    host_dir: &Path,
    target: &str,
) -> Result<(), RuntimeError> {
    let tar = tempfile::NamedTempFile::new()
        .map_err(RuntimeError::io("creating a temporary tar file"))?;
    let packed = packed::pack(host_dir, target, tar.path()).await?;
    copy_packed_in(docker, id, &packed).await
}

/// Streams a folder packed by [`packed::pack`] into the container, read from its file as the daemon takes it.
pub(super) async fn copy_packed_in(
    docker: &Docker,
    id: &str,
    packed: &PackedDir,
) -> Result<(), RuntimeError> {
    let file = tokio::fs::File::open(&packed.tar)
        .await
        .map_err(RuntimeError::io(format!(
            "opening {}",
            packed.tar.display()
        )))?;
    docker
        .upload_to_container(
            id,
            Some(UploadToContainerOptionsBuilder::new().path("/").build()),
            bollard::body_try_stream(ReaderStream::new(file)),
        )
        .await?;
    Ok(())
}

/// The first `max_bytes` of a file in the container; `None` when it does not exist or is not a regular file.
pub(super) async fn read_file(
    docker: &Docker,
    id: &str,
    path: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, RuntimeError> {
    // The tar header comes first; a file longer than `max_bytes` arrives cut short, and its first `max_bytes` are
    // what the caller asked for.
    let Some((archive, _)) =
        download(docker, id, path, max_bytes.saturating_add(64 * 1024)).await?
    else {
        return Ok(None);
    };
    first_file(&archive, max_bytes).map_err(RuntimeError::io(format!("could not read {path}")))
}

/// Copies the folder `path` of the container into `host_dir` (its contents, not the folder itself), streaming
/// Docker's tar straight to disk under `budget`: a file past its cap is cut (the rest of it is read and dropped),
/// files past the count cap are skipped, and once the attempt's total is used up nothing more is read. A missing
/// folder copies nothing.
pub(super) async fn copy_dir_out(
    docker: &Docker,
    id: &str,
    path: &str,
    host_dir: &Path,
    budget: &mut CopyBudget,
) -> Result<(), RuntimeError> {
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(id, Some(options));
    // A missing folder shows in the first answer; after that the stream is read by the unpacker as it goes.
    let first = match stream.next().await {
        None => return Ok(()),
        Some(Err(e)) if is_not_found(&e) => return Ok(()),
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(bytes)) => bytes,
    };
    let rest = futures::stream::iter([Ok(first)])
        .chain(stream)
        .map_err(io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(Box::pin(rest)));
    let dest = host_dir.to_path_buf();
    let mut owned = std::mem::take(budget);
    let (unpacked, owned) = blocking("unpacking a folder", move || {
        let unpacked = unpack_contents(reader, &dest, &mut owned);
        (unpacked, owned)
    })
    .await?;
    *budget = owned;
    unpacked.map_err(RuntimeError::io(format!(
        "could not copy {path} to {}",
        host_dir.display()
    )))
}

/// A tar stream of `path` from the container: its first `limit` bytes, and whether there was more.
async fn download(
    docker: &Docker,
    id: &str,
    path: &str,
    limit: u64,
) -> Result<Option<(Vec<u8>, bool)>, RuntimeError> {
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = docker.download_from_container(id, Some(options));
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                let room = (limit as usize).saturating_sub(data.len());
                data.extend_from_slice(&bytes[..bytes.len().min(room)]);
                if bytes.len() > room {
                    return Ok(Some((data, true)));
                }
            }
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some((data, false)))
}

/// The first `max_bytes` of the first entry of a tar, when it is a regular file. A cut-short archive is fine.
fn first_file(archive: &[u8], max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let mut tar = tar::Archive::new(archive);
    let Some(entry) = tar.entries()?.next() else {
        return Ok(None);
    };
    let entry = entry?;
    if !entry.header().entry_type().is_file() {
        return Ok(None);
    }
    let mut data = Vec::new();
    match entry.take(max_bytes).read_to_end(&mut data) {
        Ok(_) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(data)),
        Err(e) => Err(e),
    }
}

/// Unpack a tar of one folder (entries `name/...`) into `dest`, without the top folder, under `budget`. Only
/// regular files and folders are written; links, devices and any path that would leave `dest` are skipped.
fn unpack_contents(archive: impl Read, dest: &Path, budget: &mut CopyBudget) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries()? {
        if budget.exhausted() {
            // Nothing more can be kept: stop reading rather than drain the rest of a folder of any size.
            budget.left_unread();
            return Ok(());
        }
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = path.components();
        parts.next(); // the folder itself
        let relative: PathBuf = parts.as_path().to_path_buf();
        if relative.as_os_str().is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let target = dest.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if kind.is_file() {
            let seen = entry.header().size().ok();
            // Skipped entries are read past by the archive itself, a buffer at a time.
            let Some(keep) = budget.admit(seen) else {
                continue;
            };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(&target)?;
            let written = io::copy(&mut (&mut entry).take(keep), &mut file)?;
            let cut = seen.is_some_and(|s| written < s);
            budget.wrote(&relative.to_string_lossy(), written, seen, cut);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CopyLimits;

    #[test]
    fn unpack_skips_escapes_and_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`, so write the raw name to model a hostile archive.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        add("agent/ok.txt", b"fine");
        add("agent/../../evil.txt", b"bad");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "agent/link", "/etc/passwd")
            .unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let mut budget = CopyBudget::default();
        unpack_contents(&data[..], &dest, &mut budget).unwrap();
        assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"fine");
        assert!(!dir.path().join("evil.txt").exists());
        assert!(std::fs::symlink_metadata(dest.join("link")).is_err());
        assert!(!budget.was_cut());
    }

    #[test]
    fn unpack_cuts_files_at_their_cap_and_stops_when_the_attempt_is_full() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, size: usize| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &vec![b'x'; size][..]).unwrap();
        };
        add("agent/a-big.txt", 5000);
        add("agent/b-small.txt", 10);
        add("agent/c-big.txt", 5000);
        add("agent/d-never.txt", 10);
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut budget = CopyBudget::new(CopyLimits {
            max_file_bytes: 1000,
            max_total_bytes: 1500,
            max_files: 100,
        });
        budget.scope("agent");
        unpack_contents(&data[..], dir.path(), &mut budget).unwrap();
        let size = |n: &str| std::fs::metadata(dir.path().join(n)).map(|m| m.len()).ok();
        assert_eq!(size("a-big.txt"), Some(1000));
        assert_eq!(size("b-small.txt"), Some(10));
        assert_eq!(size("c-big.txt"), Some(490));
        assert_eq!(size("d-never.txt"), None);
        assert_eq!(budget.truncated().len(), 2);
        assert_eq!(budget.truncated()[0].path, "agent/a-big.txt");
        assert_eq!(budget.truncated()[0].bytes_seen, Some(5000));
        assert!(budget.stopped_early());
    }

    #[test]
    fn the_first_file_is_read_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.txt"), "hello world").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_path_with_name(dir.path().join("f.txt"), "f.txt")
            .unwrap();
        let data = b.into_inner().unwrap();
        assert_eq!(
            first_file(&data, 5).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(first_file(&[], 5).unwrap(), None);
    }
}
