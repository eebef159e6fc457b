//! Files into and out of a container as tar streams through the Docker API (no host mounts, so a remote daemon works
//! too). What comes out is untrusted: only regular files and folders are written, never outside the destination.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::StreamExt;

use super::is_not_found;
use crate::runtime::{RuntimeError, blocking};

/// Most bytes read back from a container folder by [`copy_dir_out`].
const MAX_COPY_OUT_BYTES: u64 = 256 * 1024 * 1024;

/// Copies the host folder `host_dir` to the absolute path `target` in the container.
pub(super) async fn copy_dir_in(
    docker: &Docker,
    id: &str,
    host_dir: &Path,
    target: &str,
) -> Result<(), RuntimeError> {
    let (dir, name) = (
        host_dir.to_path_buf(),
        target.trim_start_matches('/').to_owned(),
    );
    let archive = blocking("packing a folder", move || tar_dir(&dir, &name))
        .await?
        .map_err(RuntimeError::io(format!("packing {}", host_dir.display())))?;
    docker
        .upload_to_container(
            id,
            Some(UploadToContainerOptionsBuilder::new().path("/").build()),
            bollard::body_full(archive.into()),
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

/// Copies the folder `path` of the container into `host_dir` (its contents, not the folder itself), up to
/// [`MAX_COPY_OUT_BYTES`]. A missing folder copies nothing.
pub(super) async fn copy_dir_out(
    docker: &Docker,
    id: &str,
    path: &str,
    host_dir: &Path,
) -> Result<(), RuntimeError> {
    let Some((archive, cut)) = download(docker, id, path, MAX_COPY_OUT_BYTES).await? else {
        return Ok(());
    };
    let dest = host_dir.to_path_buf();
    let unpacked = blocking("unpacking a folder", move || {
        unpack_contents(&archive, &dest)
    })
    .await?;
    if cut {
        // What fitted is kept; the archive ends mid-file, so the unpacker's complaint about that is expected.
        tracing::warn!(
            path,
            limit = MAX_COPY_OUT_BYTES,
            "the folder is larger than the limit; the rest is left out"
        );
        return Ok(());
    }
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

/// Tar a host folder so that its contents land at `name` (a path from `/`) when unpacked at `/`.
fn tar_dir(host_dir: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(name, host_dir)?;
    builder.into_inner()
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

/// Unpack a tar of one folder (entries `name/...`) into `dest`, without the top folder. Only regular files and
/// folders are written; links, devices and any path that would leave `dest` are skipped.
fn unpack_contents(archive: &[u8], dest: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries()? {
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
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::File::create(&target)?;
            io::copy(&mut entry, &mut file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        unpack_contents(&data, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"fine");
        assert!(!dir.path().join("evil.txt").exists());
        assert!(std::fs::symlink_metadata(dest.join("link")).is_err());
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
