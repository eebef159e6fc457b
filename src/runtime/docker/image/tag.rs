//! Names of task images: the reuse tag (SHA-256 over the environment folder) and which names a task may use.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::DEFAULT_IMAGE_REPOSITORY;

/// A stable name for an environment folder's content, so identical environments share one image: SHA-256 (full
/// hex) over every entry's path, kind, mode, and content or link target. Each field is length-prefixed, so no two
/// different folders feed the hash the same bytes.
pub(super) fn environment_digest(dir: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let field = |hasher: &mut Sha256, bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::from)?;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        field(&mut hasher, relative.as_os_str().as_encoded_bytes());
        let meta = entry.path().symlink_metadata()?;
        // Permissions are part of what the image gets (an executable bit changes the build's result).
        field(&mut hasher, &meta.permissions().mode().to_le_bytes());
        let kind = entry.file_type();
        if kind.is_file() {
            field(&mut hasher, b"file");
            hasher.update(meta.len().to_le_bytes());
            let mut file = std::fs::File::open(entry.path())?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        } else if kind.is_symlink() {
            field(&mut hasher, b"link");
            let target = std::fs::read_link(entry.path())?;
            field(&mut hasher, target.as_os_str().as_encoded_bytes());
        } else if kind.is_dir() {
            field(&mut hasher, b"dir");
        } else {
            field(&mut hasher, b"other");
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// `[a-z0-9._-]` only, as Docker repository names require.
pub(super) fn image_name_part(name: &str) -> String {
    let cleaned: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed.chars().take(54).collect()
    }
}

/// Why a task's `docker_image` is not used (the Dockerfile is built instead), or `None` when it may be used.
pub(super) fn refusal(image: &str, repository: &str, allow: &[String]) -> Option<String> {
    let name = image
        .trim_start_matches("docker.io/")
        .trim_start_matches("index.docker.io/");
    for own in [repository, DEFAULT_IMAGE_REPOSITORY] {
        if name.starts_with(&format!("{own}/")) || name.starts_with(&format!("{own}@")) {
            return Some(format!(
                "it is in the worker's own {own}/ namespace, which holds images built for other tasks"
            ));
        }
    }
    // A bare image id (or a prefix of one) would pick whatever image on this host has it, another tenant's too.
    let id = name.trim_start_matches("sha256:");
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some("it names an image id, not a repository".to_string());
    }
    if allow.is_empty() {
        return Some("DOCKER_IMAGE_ALLOW is empty, so task images are always built".to_string());
    }
    if !allow
        .iter()
        .any(|prefix| image.starts_with(prefix.as_str()))
    {
        return Some("it matches no prefix in DOCKER_IMAGE_ALLOW".to_string());
    }
    None
}

/// The tag to pull with a reference: its own tag or digest, else `latest` (an empty tag would pull every tag).
pub(super) fn pull_parts(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => (&image[..image.len() - tag.len() - 1], tag),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_docker_safe() {
        assert_eq!(image_name_part("Hello World!"), "hello-world");
        assert_eq!(image_name_part("--"), "task");
    }

    #[test]
    fn the_digest_is_full_sha256_and_sees_content_mode_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path();
        std::fs::write(env.join("Dockerfile"), "FROM x\n").unwrap();
        let first = environment_digest(env).unwrap();
        assert_eq!(first.len(), 64);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(first, environment_digest(env).unwrap(), "stable");

        std::fs::write(env.join("Dockerfile"), "FROM y\n").unwrap();
        let content = environment_digest(env).unwrap();
        assert_ne!(first, content);

        std::fs::set_permissions(
            env.join("Dockerfile"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let mode = environment_digest(env).unwrap();
        assert_ne!(content, mode);

        std::os::unix::fs::symlink("a", env.join("link")).unwrap();
        let link_a = environment_digest(env).unwrap();
        std::fs::remove_file(env.join("link")).unwrap();
        std::os::unix::fs::symlink("b", env.join("link")).unwrap();
        assert_ne!(link_a, environment_digest(env).unwrap());
    }

    #[test]
    fn only_allowed_names_outside_the_workers_namespace_are_used() {
        let allow = vec!["127.0.0.1:5000/".to_string(), "ghcr.io/acme/".to_string()];
        assert_eq!(refusal("127.0.0.1:5000/tools:1", "tbw-task", &allow), None);
        assert_eq!(refusal("ghcr.io/acme/x", "tbw-task", &allow), None);
        assert!(refusal("ghcr.io/other/x", "tbw-task", &allow).is_some());
        assert!(refusal("debian:bookworm-slim", "tbw-task", &[]).is_some());
        let everything = vec![String::new()];
        for hostile in [
            "tbw-task/other:abc",
            "docker.io/tbw-task/other:abc",
            "mine/x:1",
            "56b10de75f8c",
            "sha256:56b10de75f8c",
        ] {
            let why = refusal(hostile, "mine", &everything);
            assert!(why.is_some(), "{hostile} must be refused");
        }
    }

    #[test]
    fn pulls_name_a_tag() {
        assert_eq!(
            pull_parts("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b", "latest")
        );
        assert_eq!(
            pull_parts("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000/a/b", "v1")
        );
        assert_eq!(pull_parts("x@sha256:00"), ("x@sha256:00", ""));
    }
}
