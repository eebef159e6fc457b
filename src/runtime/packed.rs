//! A host folder packed once into a tar file, so that every attempt of a job streams the same file into its sandbox
//! instead of building (and holding) an archive of its own.

use std::path::{Path, PathBuf};

use super::{RuntimeError, blocking};

/// A host folder packed into a tar file whose entries unpack at `target` when the tar is unpacked at `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedDir {
    /// The folder that was packed.
    pub source: PathBuf,
    /// Absolute path it lands at in the sandbox.
    pub target: String,
    /// The tar file.
    pub tar: PathBuf,
}

/// Packs `source` into a new tar file at `tar` (written straight to disk, a file at a time); symbolic links are
/// stored as links, never followed.
pub async fn pack(source: &Path, target: &str, tar: &Path) -> Result<PackedDir, RuntimeError> {
    let packed = PackedDir {
        source: source.to_path_buf(),
        target: target.to_string(),
        tar: tar.to_path_buf(),
    };
    let job = packed.clone();
    blocking("packing a folder", move || -> std::io::Result<()> {
        if let Some(parent) = job.tar.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::io::BufWriter::new(std::fs::File::create(&job.tar)?);
        let mut builder = tar::Builder::new(file);
        builder.follow_symlinks(false);
        builder.append_dir_all(job.target.trim_start_matches('/'), &job.source)?;
        builder
            .into_inner()?
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        Ok(())
    })
    .await?
    .map_err(RuntimeError::io(format!("packing {}", source.display())))?;
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_packs_under_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tests");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a.txt"), "a").unwrap();
        let packed = pack(&src, "/tests", &dir.path().join("p/tests.tar"))
            .await
            .unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&packed.tar).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"tests/sub/a.txt".to_string()), "{names:?}");
    }
}
