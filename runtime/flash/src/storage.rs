//! Where a slot directory lives: every file operation [`SlotDir`](crate::SlotDir) does goes
//! through [`Storage`], so the same logic runs on the real file system ([`StdStorage`], what
//! `emberd` uses) and on a simulated one that can lose power at any step
//! (`MemoryStorage`, with the `testing` feature).

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The file operations of a slot directory. Paths are whole paths (the directory joined with a
/// file name). Operations that change something — creating, writing, sizing, syncing, renaming
/// — are the steps a power cut can fall between.
pub trait Storage {
    /// A file open for writing.
    type File: StorageFile;
    /// A whole file's bytes, to verify (a read-only mapping on a real file system).
    type Bytes: Deref<Target = [u8]>;

    /// Opens `path` for reading and writing, creating it empty if it does not exist (its
    /// contents stay).
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates `path` empty for writing (truncating it if it exists).
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads a small file whole.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// A large file's bytes; the file must not change while they are held.
    fn map(&self, path: &Path) -> io::Result<Self::Bytes>;
    /// The length of `path` (`NotFound` if there is no such file).
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Renames `from` to `to`, replacing `to`. Durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (files created, renamed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes an unprivileged process may still write in `dir`'s file system.
    fn free_space(&self, dir: &Path) -> io::Result<u64>;
}

/// A file open for writing through a [`Storage`].
pub trait StorageFile {
    /// Writes all of `bytes` at `offset`.
    fn write_all_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the file's contents and metadata durable.
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The real file system, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdStorage;

impl Storage for StdStorage {
    type File = File;
    type Bytes = memmap2::Mmap;

    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn map(&self, path: &Path) -> io::Result<memmap2::Mmap> {
        let file = File::open(path)?;
        // SAFETY: a read-only mapping of a slot file, which only this process writes, and not
        // while the mapping lives (the trait's contract).
        unsafe { memmap2::Mmap::map(&file) }
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn free_space(&self, dir: &Path) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

impl StorageFile for File {
    fn write_all_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}
