//! Safe extraction of task archives, and zipping of task folders.
//!
//! Task archives come from users, so [`extract_zip`] assumes the worst: it checks every entry
//! before writing anything, never writes through a link the archive itself creates, and counts
//! the bytes it actually writes rather than the sizes the archive claims. Only Unix is supported,
//! like the rest of the worker (file modes and symbolic links are recreated as they were).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, Permissions};
use std::io::{self, Cursor, Read, Seek};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use walkdir::WalkDir;
use zip::result::ZipError;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZIP64_BYTES_THR, ZipArchive, ZipWriter};

use crate::paths::{MACOS_METADATA_DIR, has_drive_prefix, link_stays_inside};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Longer link targets are refused: no real task needs them, and they are read into memory.
const MAX_LINK_TARGET_BYTES: u64 = 4096;
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

/// Bounds on what [`extract_zip`] accepts, so one upload cannot fill the worker's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Most bytes all extracted files may hold together, counted as they are written.
    pub max_total_bytes: u64,
    /// Most entries (files, folders and links, `__MACOSX/` included) the archive may list.
    pub max_entries: usize,
    /// Largest archive, in bytes, accepted at all.
    pub max_archive_bytes: u64,
}

impl Default for ExtractLimits {
    /// 512 MiB extracted, 20 000 entries, 256 MiB archive.
    fn default() -> Self {
        Self {
            max_total_bytes: 512 * MIB,
            max_entries: 20_000,
            max_archive_bytes: 256 * MIB,
        }
    }
}

/// What [`extract_zip`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Files, folders and links created (skipped `__MACOSX/` entries are not counted).
    pub entries: usize,
    /// Bytes written to files.
    pub total_bytes: u64,
}

/// Why a task archive could not be extracted or a folder zipped.
///
/// Messages are written for the person who uploaded the archive: they become the job's error.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The bytes are not a zip archive, or one the zip reader cannot handle.
    #[error("the task archive is not a valid zip file: {0}")]
    NotZip(String),
    /// The archive holds no file or link (folders alone do not make a task).
    #[error("the task archive is empty")]
    Empty,
    /// An entry's name is absolute, has a `..` component, a drive prefix or a NUL byte, or lies
    /// inside (or on top of) a symbolic link of the archive.
    #[error(
        "the task archive contains an unsafe path {name:?} (absolute, with `..`, or through a symbolic link)"
    )]
    UnsafePath {
        /// The entry's name as stored in the archive.
        name: String,
    },
    /// A symbolic link whose target is absolute or resolves outside the extraction folder.
    #[error(
        "the task archive contains a symbolic link {name:?} to {target:?}, which points outside the task"
    )]
    EscapingLink {
        /// The link's name as stored in the archive.
        name: String,
        /// The link's target as stored in the archive.
        target: String,
    },
    /// The extracted files would exceed [`ExtractLimits::max_total_bytes`].
    #[error("the task archive unpacks to more than {}", show_size(*limit))]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The archive itself is over [`ExtractLimits::max_archive_bytes`].
    #[error("the task archive is {} but at most {} is accepted", show_size(*size), show_size(*limit))]
    ArchiveTooLarge {
        /// The archive's size, in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The archive lists more than [`ExtractLimits::max_entries`] entries.
    #[error("the task archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// Reading the archive's data or writing to the disk failed.
    #[error("could not extract or create the task archive: {0}")]
    Io(#[from] io::Error),
}

fn show_size(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

fn not_zip(error: ZipError) -> ArchiveError {
    match error {
        ZipError::Io(error) => ArchiveError::Io(error),
        other => ArchiveError::NotZip(other.to_string()),
    }
}

/// One entry that passed the checks, ready to be written.
struct Planned {
    index: usize,
    path: PathBuf,
    kind: Kind,
    mode: Option<u32>,
}

enum Kind {
    Dir,
    File,
    Symlink { target: String },
}

/// Extracts a zip archive into `dest`, which should be a new, empty folder (it is created if
/// missing).
///
/// Every entry is checked before anything is written, so an archive with one bad name leaves
/// `dest` untouched. Files keep their Unix permission bits (setuid, setgid and sticky bits are
/// dropped; the owner can always read and write), folders default to `0o755` and files to
/// `0o644` when the archive has no Unix modes. Symbolic links are recreated as links when their
/// target is relative and stays inside `dest`; they are created last, and no entry may lie
/// inside one, so nothing is ever written through them. `__MACOSX/` entries are skipped.
///
/// The size limit is enforced on the bytes really written, so a zip bomb stops at the limit
/// whatever its headers claim. When this fails midway `dest` holds part of the archive: remove it.
///
/// # Errors
///
/// Any [`ArchiveError`]; a well-formed archive within `limits` gives none of them.
pub fn extract_zip(
    bytes: &[u8],
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<ExtractSummary, ArchiveError> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    extract_from(Cursor::new(bytes), size, dest, limits)
}

/// [`extract_zip`] for an archive in a file, read from disk as it goes (never whole in memory).
///
/// # Errors
///
/// As [`extract_zip`], and [`ArchiveError::Io`] when the file cannot be read.
pub fn extract_zip_file(
    archive: &Path,
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<ExtractSummary, ArchiveError> {
    let file = File::open(archive)?;
    let size = file.metadata()?.len();
    extract_from(io::BufReader::new(file), size, dest, limits)
}

fn extract_from<R: Read + Seek>(
    reader: R,
    size: u64,
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<ExtractSummary, ArchiveError> {
    if size > limits.max_archive_bytes {
        return Err(ArchiveError::ArchiveTooLarge {
            size,
            limit: limits.max_archive_bytes,
        });
    }
    if size == 0 {
        return Err(ArchiveError::Empty);
    }
    let mut archive = ZipArchive::new(reader).map_err(not_zip)?;
    if archive.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: limits.max_entries,
        });
    }

    let planned = plan(&mut archive)?;

    fs::create_dir_all(dest)?;
    let mut summary = ExtractSummary::default();
    // Links last: every file and folder is then written before any link exists to redirect it.
    for entry in &planned {
        let path = dest.join(&entry.path);
        match entry.kind {
            Kind::Dir => {
                fs::create_dir_all(&path)?;
                let mode = entry.mode.map_or(DEFAULT_DIR_MODE, |m| m & 0o777 | 0o700);
                fs::set_permissions(&path, Permissions::from_mode(mode))?;
            }
            Kind::File => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                let remaining = limits.max_total_bytes.saturating_sub(summary.total_bytes);
                let mut reader = archive.by_index(entry.index).map_err(not_zip)?;
                let mut out = File::create(&path)?;
                // One byte past the limit is enough to know it is exceeded.
                let written = io::copy(
                    &mut (&mut reader).take(remaining.saturating_add(1)),
                    &mut out,
                )?;
                summary.total_bytes = summary.total_bytes.saturating_add(written);
                if summary.total_bytes > limits.max_total_bytes {
                    return Err(ArchiveError::TooLarge {
                        limit: limits.max_total_bytes,
                    });
                }
                let mode = entry.mode.map_or(DEFAULT_FILE_MODE, |m| m & 0o777 | 0o600);
                out.set_permissions(Permissions::from_mode(mode))?;
            }
            Kind::Symlink { .. } => continue,
        }
        summary.entries += 1;
    }
    for entry in &planned {
        if let Kind::Symlink { target } = &entry.kind {
            let path = dest.join(&entry.path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            symlink(target, &path)?;
            summary.entries += 1;
        }
    }
    Ok(summary)
}

/// The first pass: reads and checks every entry's name (and every link's target) without
/// writing anything.
fn plan<R: Read + Seek>(archive: &mut ZipArchive<R>) -> Result<Vec<Planned>, ArchiveError> {
    let mut planned = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let (name, is_dir, is_symlink, mode) = {
            let entry = archive.by_index_data(index).map_err(not_zip)?;
            let name = entry.name().map_err(not_zip)?.into_owned();
            (name, entry.is_dir(), entry.is_symlink(), entry.unix_mode())
        };
        let unsafe_path = || ArchiveError::UnsafePath { name: name.clone() };
        let parts = relative_components(&name).ok_or_else(unsafe_path)?;
        if parts.first() == Some(&MACOS_METADATA_DIR) {
            continue;
        }
        if parts.is_empty() {
            // `./` names the extraction folder itself; a file cannot have that name.
            if is_dir {
                continue;
            }
            return Err(unsafe_path());
        }
        let path: PathBuf = parts.iter().collect();
        let kind = if is_dir {
            Kind::Dir
        } else if is_symlink {
            Kind::Symlink {
                target: read_link_target(archive, index, &name)?,
            }
        } else {
            Kind::File
        };
        planned.push(Planned {
            index,
            path,
            kind,
            mode,
        });
    }

    if !planned.iter().any(|e| !matches!(e.kind, Kind::Dir)) {
        return Err(ArchiveError::Empty);
    }
    check_links(archive, &planned)?;
    Ok(planned)
}

fn read_link_target<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    index: usize,
    name: &str,
) -> Result<String, ArchiveError> {
    let mut target = Vec::new();
    archive
        .by_index(index)
        .map_err(not_zip)?
        .take(MAX_LINK_TARGET_BYTES + 1)
        .read_to_end(&mut target)?;
    let target = String::from_utf8_lossy(&target).into_owned();
    if u64::try_from(target.len()).unwrap_or(u64::MAX) > MAX_LINK_TARGET_BYTES {
        return Err(ArchiveError::EscapingLink {
            name: name.to_owned(),
            target: format!("{}…", target.chars().take(64).collect::<String>()),
        });
    }
    Ok(target)
}

/// Refuses entries inside or on top of a link, and links that point outside the extraction
/// folder.
fn check_links<R: Read + Seek>(
    archive: &ZipArchive<R>,
    planned: &[Planned],
) -> Result<(), ArchiveError> {
    let raw_name = |index: usize| {
        archive
            .name_for_index(index)
            .and_then(Result::ok)
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_default()
    };
    let mut links = HashSet::new();
    for entry in planned {
        if matches!(entry.kind, Kind::Symlink { .. }) && !links.insert(entry.path.as_path()) {
            return Err(ArchiveError::UnsafePath {
                name: raw_name(entry.index),
            });
        }
    }
    for entry in planned {
        let on_link = !matches!(entry.kind, Kind::Symlink { .. }) && links.contains(&*entry.path);
        let in_link = entry.path.ancestors().skip(1).any(|a| links.contains(a));
        if on_link || in_link {
            return Err(ArchiveError::UnsafePath {
                name: raw_name(entry.index),
            });
        }
        if let Kind::Symlink { target } = &entry.kind
            && !link_stays_inside(&entry.path, OsStr::new(target), |folder| {
                links.contains(folder)
            })
        {
            return Err(ArchiveError::EscapingLink {
                name: raw_name(entry.index),
                target: target.clone(),
            });
        }
    }
    Ok(())
}

/// Splits an entry name into path components, or `None` when the name could land outside the
/// extraction folder. Backslashes count as separators, as zips made on Windows use them.
fn relative_components(name: &str) -> Option<Vec<&str>> {
    if name.contains('\0') || name.starts_with(['/', '\\']) {
        return None;
    }
    let mut parts = Vec::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return None,
            _ if parts.is_empty() && has_drive_prefix(part.as_bytes()) => return None,
            _ => parts.push(part),
        }
    }
    Some(parts)
}

/// Zips the folder `dir`, for submitting a task folder.
///
/// Entry names start with the folder's own name (`hello-world/task.toml`), entries come in
/// sorted order with a fixed timestamp (the same folder always gives the same bytes), files are
/// deflated and keep their Unix permissions, and symbolic links are stored as links. Sockets,
/// FIFOs and devices are skipped with a warning.
///
/// # Errors
///
/// [`ArchiveError::Io`] when the folder cannot be read or a name is not UTF-8.
pub fn zip_dir(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let prefix = folder_name(dir)?;
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().last_modified_time(DateTime::default());
    for entry in WalkDir::new(dir).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(io::Error::from)?;
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|_| io::Error::other("walked outside the folder being zipped"))?;
        let name = archive_name(&prefix, relative)?;
        let metadata = entry.metadata().map_err(io::Error::from)?;
        let mode = metadata.permissions().mode() & 0o777;
        let file_type = entry.file_type();
        if file_type.is_dir() {
            writer
                .add_directory(format!("{name}/"), options.unix_permissions(mode))
                .map_err(io::Error::from)?;
        } else if file_type.is_file() {
            writer
                .start_file(
                    name,
                    options
                        .compression_method(CompressionMethod::Deflated)
                        .unix_permissions(mode)
                        .large_file(metadata.len() >= ZIP64_BYTES_THR),
                )
                .map_err(io::Error::from)?;
            io::copy(&mut File::open(entry.path())?, &mut writer)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(entry.path())?;
            let target = target.to_str().ok_or_else(|| not_utf8(entry.path()))?;
            writer
                .add_symlink(name, target, options)
                .map_err(io::Error::from)?;
        } else {
            tracing::warn!(path = %entry.path().display(), "not a file, folder or link; left out of the task archive");
        }
    }
    let cursor = writer.finish().map_err(io::Error::from)?;
    Ok(cursor.into_inner())
}

fn folder_name(dir: &Path) -> io::Result<String> {
    let name = match dir.file_name() {
        Some(name) => name.to_owned(),
        // `.` or `..`: name the folder they stand for.
        None => dir
            .canonicalize()?
            .file_name()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} has no folder name to put in the archive", dir.display()),
                )
            })?
            .to_owned(),
    };
    name.into_string().map_err(|_| not_utf8(dir))
}

fn archive_name(prefix: &str, relative: &Path) -> io::Result<String> {
    let mut name = prefix.to_owned();
    for part in relative.components() {
        let part = part
            .as_os_str()
            .to_str()
            .ok_or_else(|| not_utf8(relative))?;
        name.push('/');
        name.push_str(part);
    }
    Ok(name)
}

fn not_utf8(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not valid UTF-8", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip_with(build: impl FnOnce(&mut ZipWriter<Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        build(&mut writer);
        writer.finish().unwrap().into_inner()
    }

    fn add_file(writer: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, contents: &[u8]) {
        writer
            .start_file(name, SimpleFileOptions::default())
            .unwrap();
        writer.write_all(contents).unwrap();
    }

    fn extract(
        bytes: &[u8],
        limits: &ExtractLimits,
    ) -> (tempfile::TempDir, Result<ExtractSummary, ArchiveError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = extract_zip(bytes, &dir.path().join("out"), limits);
        (dir, result)
    }

    fn is_empty_or_missing(path: &Path) -> bool {
        fs::read_dir(path).map_or(true, |mut entries| entries.next().is_none())
    }

    #[test]
    fn extracts_files_folders_and_inner_links() {
        let bytes = zip_with(|w| {
            w.add_directory("task/", SimpleFileOptions::default())
                .unwrap();
            add_file(w, "task/task.toml", b"version = \"1.0\"\n");
            w.start_file(
                "task/tests/test.sh",
                SimpleFileOptions::default().unix_permissions(0o755),
            )
            .unwrap();
            w.write_all(b"#!/bin/sh\n").unwrap();
            w.add_symlink(
                "task/tests/link.sh",
                "../tests/test.sh",
                SimpleFileOptions::default(),
            )
            .unwrap();
            add_file(w, "__MACOSX/task/._task.toml", b"resource fork");
        });
        let (dir, result) = extract(&bytes, &ExtractLimits::default());
        let summary = result.unwrap();
        let out = dir.path().join("out");

        assert_eq!(summary.entries, 4);
        assert_eq!(summary.total_bytes, 16 + 10);
        assert_eq!(
            fs::read_to_string(out.join("task/task.toml")).unwrap(),
            "version = \"1.0\"\n"
        );
        let mode = fs::metadata(out.join("task/tests/test.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let link = out.join("task/tests/link.sh");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../tests/test.sh"));
        assert_eq!(fs::read_to_string(&link).unwrap(), "#!/bin/sh\n");
        assert!(!out.join("__MACOSX").exists());
    }

    #[test]
    fn not_a_zip() {
        let (_dir, result) = extract(b"this is not a zip archive", &ExtractLimits::default());
        let error = result.unwrap_err();
        assert!(matches!(error, ArchiveError::NotZip(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("the task archive is not a valid zip file: ")
        );
    }

    #[test]
    fn empty_archives() {
        let no_entries = zip_with(|_| {});
        let only_folders = zip_with(|w| {
            w.add_directory("task/", SimpleFileOptions::default())
                .unwrap();
            w.add_directory("task/tests/", SimpleFileOptions::default())
                .unwrap();
        });
        let only_macos = zip_with(|w| add_file(w, "__MACOSX/._x", b"x"));
        for bytes in [Vec::new(), no_entries, only_folders, only_macos] {
            let (_dir, result) = extract(&bytes, &ExtractLimits::default());
            let error = result.unwrap_err();
            assert!(matches!(error, ArchiveError::Empty), "{error:?}");
            assert_eq!(error.to_string(), "the task archive is empty");
        }
    }

    #[test]
    fn unsafe_names_are_refused_before_anything_is_written() {
        for bad in [
            "../evil",
            "task/../../evil",
            "/abs",
            "\\abs",
            "C:/windows/evil",
            "C:evil",
            "a\0b",
            "..\\evil",
        ] {
            let bytes = zip_with(|w| {
                add_file(w, "task/ok.txt", b"fine");
                add_file(w, bad, b"evil");
            });
            let (dir, result) = extract(&bytes, &ExtractLimits::default());
            match result {
                Err(ArchiveError::UnsafePath { name }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: expected UnsafePath, got {other:?}"),
            }
            assert!(
                is_empty_or_missing(&dir.path().join("out")),
                "{bad:?}: something was written"
            );
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn links_pointing_outside_are_refused() {
        for (name, target) in [
            ("task/link", "../../etc/passwd"),
            ("link", ".."),
            ("task/link", "/etc/passwd"),
            ("task/link", ""),
        ] {
            let bytes = zip_with(|w| {
                add_file(w, "task/ok.txt", b"fine");
                w.add_symlink(name, target, SimpleFileOptions::default())
                    .unwrap();
            });
            let (dir, result) = extract(&bytes, &ExtractLimits::default());
            match result {
                Err(ArchiveError::EscapingLink { name: n, target: t }) => {
                    assert_eq!((n.as_str(), t.as_str()), (name, target));
                }
                other => panic!("{name} -> {target}: expected EscapingLink, got {other:?}"),
            }
            assert!(is_empty_or_missing(&dir.path().join("out")));
        }
    }

    #[test]
    fn nothing_is_written_through_a_link() {
        // `x -> .` is harmless alone, but `x/y` would land at `y`, one level up from where the
        // name says, and `y -> ..` would then point outside.
        let through_link = zip_with(|w| {
            w.add_symlink("x", ".", SimpleFileOptions::default())
                .unwrap();
            w.add_symlink("x/y", "..", SimpleFileOptions::default())
                .unwrap();
        });
        let (_dir, result) = extract(&through_link, &ExtractLimits::default());
        assert!(
            matches!(result, Err(ArchiveError::UnsafePath { ref name }) if name == "x/y"),
            "{result:?}"
        );

        let file_in_link = zip_with(|w| {
            add_file(w, "task/ok.txt", b"fine");
            w.add_symlink("x", "task", SimpleFileOptions::default())
                .unwrap();
            add_file(w, "x/ok.txt", b"written through the link");
        });
        let (_dir, result) = extract(&file_in_link, &ExtractLimits::default());
        assert!(
            matches!(result, Err(ArchiveError::UnsafePath { ref name }) if name == "x/ok.txt"),
            "{result:?}"
        );

        // `a -> .` then `b -> a/..`: lexically `b` is the top folder, really its parent.
        let dotdot_after_link = zip_with(|w| {
            w.add_symlink("a", ".", SimpleFileOptions::default())
                .unwrap();
            w.add_symlink("b", "a/..", SimpleFileOptions::default())
                .unwrap();
        });
        let (_dir, result) = extract(&dotdot_after_link, &ExtractLimits::default());
        assert!(
            matches!(result, Err(ArchiveError::EscapingLink { ref name, .. }) if name == "b"),
            "{result:?}"
        );
    }

    #[test]
    fn zip_bomb_stops_at_the_limit() {
        let bytes = zip_with(|w| {
            w.start_file(
                "bomb",
                SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
            )
            .unwrap();
            w.write_all(&vec![0; 10 * MIB as usize]).unwrap();
        });
        assert!(
            bytes.len() < 100 * KIB as usize,
            "the bomb should compress well"
        );
        let limits = ExtractLimits {
            max_total_bytes: MIB,
            ..ExtractLimits::default()
        };
        let (dir, result) = extract(&bytes, &limits);
        let error = result.unwrap_err();
        assert!(
            matches!(error, ArchiveError::TooLarge { limit } if limit == MIB),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the task archive unpacks to more than 1 MiB"
        );
        let written = fs::metadata(dir.path().join("out/bomb")).unwrap().len();
        assert!(written <= MIB + 1, "wrote {written} bytes");
    }

    #[test]
    fn lying_headers_do_not_get_past_the_limit() {
        let mut bytes = zip_with(|w| {
            w.start_file(
                "bomb",
                SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
            )
            .unwrap();
            w.write_all(&vec![0; 10 * MIB as usize]).unwrap();
        });
        // Claim 100 bytes in both the local header (offset 22) and the central directory (24).
        let claimed = 100u32.to_le_bytes();
        bytes[22..26].copy_from_slice(&claimed);
        let central = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
        bytes[central + 24..central + 28].copy_from_slice(&claimed);

        let limits = ExtractLimits {
            max_total_bytes: MIB,
            ..ExtractLimits::default()
        };
        let (dir, result) = extract(&bytes, &limits);
        // Our byte count would stop it at the limit; the zip reader already stops it at the
        // claimed size.
        let error = result.unwrap_err();
        assert!(
            matches!(error, ArchiveError::TooLarge { .. } | ArchiveError::Io(_)),
            "{error:?}"
        );
        let written = fs::metadata(dir.path().join("out/bomb")).unwrap().len();
        assert!(written <= MIB + 1, "wrote {written} bytes");
    }

    #[test]
    fn archive_and_entry_count_limits() {
        let bytes = zip_with(|w| {
            for i in 0..5 {
                add_file(w, &format!("f{i}"), b"x");
            }
        });
        let limits = ExtractLimits {
            max_entries: 4,
            ..ExtractLimits::default()
        };
        let (_dir, result) = extract(&bytes, &limits);
        assert!(
            matches!(result, Err(ArchiveError::TooManyEntries { limit: 4 })),
            "{result:?}"
        );

        let limits = ExtractLimits {
            max_archive_bytes: 100,
            ..ExtractLimits::default()
        };
        let (_dir, result) = extract(&bytes, &limits);
        match result {
            Err(error @ ArchiveError::ArchiveTooLarge { size, limit: 100 }) => {
                assert_eq!(size, bytes.len() as u64);
                assert!(
                    error
                        .to_string()
                        .ends_with("but at most 100 bytes is accepted"),
                    "{error}"
                );
            }
            other => panic!("expected ArchiveTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn zip_dir_round_trip() {
        let source = tempfile::tempdir().unwrap();
        let task = source.path().join("hello-world");
        fs::create_dir_all(task.join("tests")).unwrap();
        fs::create_dir_all(task.join("environment")).unwrap();
        fs::write(task.join("task.toml"), "version = \"1.0\"\n").unwrap();
        fs::write(task.join("environment/Dockerfile"), "FROM debian\n").unwrap();
        fs::write(task.join("tests/test.sh"), "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(task.join("tests/test.sh"), Permissions::from_mode(0o750)).unwrap();
        symlink("test.sh", task.join("tests/run.sh")).unwrap();

        let bytes = zip_dir(&task).unwrap();
        assert_eq!(
            bytes,
            zip_dir(&task).unwrap(),
            "zipping should be deterministic"
        );

        let archive = ZipArchive::new(Cursor::new(bytes.as_slice())).unwrap();
        let names: Vec<_> = archive
            .file_names()
            .map(|n| n.unwrap().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "hello-world/",
                "hello-world/environment/",
                "hello-world/environment/Dockerfile",
                "hello-world/task.toml",
                "hello-world/tests/",
                "hello-world/tests/run.sh",
                "hello-world/tests/test.sh",
            ]
        );

        let (dir, result) = extract(&bytes, &ExtractLimits::default());
        let summary = result.unwrap();
        assert_eq!(summary.entries, 7);
        let out = dir.path().join("out/hello-world");
        let test_sh = out.join("tests/test.sh");
        assert_eq!(fs::read_to_string(&test_sh).unwrap(), "#!/bin/sh\nexit 0\n");
        assert_eq!(
            fs::metadata(&test_sh).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(
            fs::read_link(out.join("tests/run.sh")).unwrap(),
            Path::new("test.sh")
        );
        assert_eq!(
            fs::read_to_string(out.join("environment/Dockerfile")).unwrap(),
            "FROM debian\n"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(show_size(512 * MIB), "512 MiB");
        assert_eq!(show_size(4 * KIB), "4 KiB");
        assert_eq!(show_size(1000), "1000 bytes");
    }
}
