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
                        if !sync_file(&blob_dir.join(&name))? {
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

/// fsync a file; `false` if it is gone (sled removes old blobs and snapshots
/// on its own threads).
fn sync_file(path: &Path) -> std::io::Result<bool> {
    match File::open(path) {
        Ok(f) => f.sync_all().map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
