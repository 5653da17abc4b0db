//! What an fsync has to cover for a file Hearth writes to survive a power cut:
//! the data of the file, and the directory entry of every file created,
//! renamed or removed (ARCHITECTURE.md, "Durability").

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// fsync a directory, so that the entries created, renamed or removed in it
/// survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes` atomically and durably: write a temporary file
/// beside it, fsync it, rename it over `path`, fsync the directory. After a
/// power cut the file holds either the old bytes or the new ones, never a mix.
/// The file is created readable by its owner only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A leftover of a crash keeps its mode when truncated: start afresh, so
    // that the file is owner-only whatever was there.
    let _ = fs::remove_file(&tmp);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(&dir)
}

/// Make a store (or relay) directory private to its owner: the directory
/// and every directory under it 0700, every file 0600. Returns the paths
/// (relative to `dir`) that were looser. Symbolic links are left alone.
///
/// Hearth creates its own files owner-only, but sled creates its files with
/// the process umask (0644 with the usual 022), and a directory copied or
/// restored by hand may carry anything: a header readable by another account
/// is an offline passphrase guess away from the whole store.
pub fn make_private(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            // Removed meanwhile (sled drops old blobs and snapshots).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let want = if meta.is_dir() {
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            return Ok(());
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & !want & 0o7777 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & want))?;
            let rel = path.strip_prefix(root).unwrap_or(path);
            out.push(if rel.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                rel.to_path_buf()
            });
        }
        if meta.is_dir() {
            for e in fs::read_dir(path)? {
                walk(root, &e?.path(), out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// [`make_private`] of the files directly in `dir` (not of its
/// subdirectories, nor of `dir` itself). Returns the names that were looser.
pub fn make_private_shallow(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        // Removed meanwhile, or not a file: left to the full walk.
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if !make_private(&e.path())?.is_empty() {
            out.push(PathBuf::from(e.file_name()));
        }
    }
    Ok(out)
}

/// Create `dir` (and its missing parents) with the new directory owner-only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// Copy a directory tree, fsyncing every file and directory of the copy (and
/// the directory it is created in).
pub fn copy_dir_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            let target = to.join(e.file_name());
            if e.file_type()?.is_dir() {
                copy(&e.path(), &target)?;
            } else {
                fs::copy(e.path(), &target)?;
                File::open(&target)?.sync_all()?;
            }
        }
        sync_dir(to)
    }
    copy(from, to)?;
    match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => Ok(()),
    }
}

/// The files of a sled 0.34 database directory, made durable after a flush.
///
/// sled's `flush()` ends in `sync_file_range`, which does not survive a power
/// cut (sled issues 1351, 1452), and sled never fsyncs the files it writes
/// under `blobs/` (every tree node bigger than a quarter of a segment) nor the
/// directories where it renames snapshots and creates blobs. This fsyncs them
/// all, blobs first, so that the main file never durably points at a blob that
/// is not.
#[derive(Debug)]
pub struct SledFiles {
    dir: PathBuf,
    /// Blob files already fsynced (sled writes each once and never changes it).
    blobs: HashSet<OsString>,
}

impl SledFiles {
    /// For the sled database in `dir`.
    pub fn new(dir: &Path) -> Self {
        SledFiles {
            dir: dir.to_path_buf(),
            blobs: HashSet::new(),
        }
    }

    /// fsync every file and directory sled has written since the last call.
    /// Call after `Db::flush`.
    pub fn sync(&mut self) -> std::io::Result<()> {
        let blob_dir = self.dir.join("blobs");
        match fs::read_dir(&blob_dir) {
            Ok(entries) => {
                let mut present = HashSet::new();
                let mut changed = false;
                for e in entries {
                    let name = e?.file_name();
                    if !self.blobs.contains(&name) {
                        // sled creates blobs under the process umask: owner
                        // only, like every other file of the store.
                        if !private_file(&blob_dir.join(&name))? || !sync_file(&blob_dir.join(&name))? {
                            continue;
                        }
                        changed = true;
                    }
                    present.insert(name);
                }
                changed |= present.len() != self.blobs.len() || !self.blobs.is_subset(&present);
                if changed {
                    sync_dir(&blob_dir)?;
                }
                self.blobs = present;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            // The log file, its configuration, and finished snapshots (sled
            // fsyncs a snapshot before renaming it; the rename needs the
            // directory fsync below).
            if (name == "db" || name == "conf" || (name.starts_with("snap.") && !name.ends_with(".generating")))
                && e.file_type()?.is_file()
            {
                sync_file(&e.path())?;
            }
        }
        sync_dir(&self.dir)
    }
}

/// Make a file readable by its owner only; `false` if it is gone.
fn private_file(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            match fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// fsync a file; `false` if it is gone (sled removes old blobs and snapshots
/// on its own threads).
fn sync_file(path: &Path) -> std::io::Result<bool> {
    match File::open(path) {
        Ok(f) => f.sync_all().map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_shallow_pass_tightens_the_files_at_the_top_only() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let top = tmp.path().join("snap.1");
        let sub = tmp.path().join("blobs");
        fs::create_dir(&sub).unwrap();
        let deep = sub.join("7");
        for f in [&top, &deep] {
            fs::write(f, b"x").unwrap();
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(make_private_shallow(tmp.path()).unwrap(), vec![PathBuf::from("snap.1")]);
        assert_eq!((mode(&top), mode(&deep), mode(&sub)), (0o600, 0o644, 0o755));
        assert!(make_private_shallow(tmp.path()).unwrap().is_empty());
        // The full walk takes the rest.
        let mut loose = make_private(tmp.path()).unwrap();
        loose.sort();
        assert_eq!(loose, vec![PathBuf::from("blobs"), PathBuf::from("blobs/7")]);
    }
}
