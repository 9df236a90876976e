//! A slot directory's storage in memory that can lose power after any step, for tests.
//!
//! The durability model is the worst case a POSIX file system allows for the operations a
//! [`SlotDir`](crate::SlotDir) does:
//!
//! - a file's contents (its bytes and its length) survive a power cut as they were at its last
//!   `sync_data`/`sync_all`: every later write or `set_len` is lost, whole;
//! - a directory entry — a file created, a rename — survives only once its directory is synced
//!   ([`Storage::sync_dir`]); until then the directory's entries as of its last sync survive;
//! - unsynced data is never partly kept: a torn write is not modelled (nothing a slot directory
//!   reads after a restart was unsynced when the record pointing to it was written).
//!
//! A mutating step is any operation that may change something: `open`, `create`, a write,
//! `set_len`, a file or directory sync, a rename. [`MemoryStorage::cut_power_after`] lets `n`
//! more of them happen; the next one finds the device dead, and so does every operation after it
//! (reads too) until [`MemoryStorage::power_cycle`] brings it back in its durable state.
//! [`MemoryStorage::restart`] is a crash of the process alone: nothing is lost. Space never runs
//! out (inject `StorageFull` with [`MemoryStorage::fail_after`]).

use crate::storage::{Storage, StorageFile};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What [`Storage::free_space`] reports: space never runs out in memory (inject
/// `StorageFull` with [`MemoryStorage::fail_after`]).
const FREE_SPACE: u64 = 1 << 40;

/// A file system in memory, shared by its clones: a test keeps one to cut the power while a
/// [`SlotDir`](crate::SlotDir) works on another.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    disk: Arc<Mutex<Disk>>,
}

#[derive(Debug, Default)]
struct Disk {
    files: Vec<Contents>,
    /// Directory entries as the running system sees them: path → index in `files`.
    names: BTreeMap<PathBuf, usize>,
    /// Directory entries as they survive a power cut.
    durable_names: BTreeMap<PathBuf, usize>,
    /// Power-on count: files opened before a restart cannot be used after it.
    boots: u64,
    /// Mutating steps done since the device was powered on.
    steps: u64,
    /// The step the power fails at, if it is to.
    cut_at: Option<u64>,
    /// The step that fails with this error (once), if one is to.
    fault: Option<(u64, io::Error)>,
    dead: bool,
}

#[derive(Debug, Default)]
struct Contents {
    bytes: Vec<u8>,
    /// The bytes as of the last sync.
    durable: Vec<u8>,
}

fn power_off() -> io::Error {
    io::Error::other("the device lost power")
}

impl Disk {
    /// Fails once the power is off (every operation).
    fn alive(&self) -> io::Result<()> {
        if self.dead { Err(power_off()) } else { Ok(()) }
    }

    /// Begins a mutating step: fails when the power is off, goes off now, or a fault is due.
    fn step(&mut self) -> io::Result<()> {
        self.alive()?;
        if self.cut_at == Some(self.steps) {
            self.dead = true;
            return Err(power_off());
        }
        if self.fault.as_ref().is_some_and(|(at, _)| *at == self.steps)
            && let Some((_, error)) = self.fault.take()
        {
            return Err(error);
        }
        self.steps += 1;
        Ok(())
    }

    fn file(&self, path: &Path) -> io::Result<usize> {
        self.alive()?;
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    /// The file `path`, created empty (not yet durable) if absent.
    fn open(&mut self, path: &Path) -> usize {
        if let Some(&index) = self.names.get(path) {
            return index;
        }
        self.files.push(Contents::default());
        let index = self.files.len() - 1;
        self.names.insert(path.to_path_buf(), index);
        index
    }
}

impl MemoryStorage {
    /// An empty file system, powered on.
    pub fn new() -> Self {
        Self::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a file at `path`, synced and with its directory entry durable (what a device was
    /// installed with). Not a step.
    pub fn install(&self, path: &Path, bytes: &[u8]) {
        let mut disk = self.disk();
        let index = disk.open(path);
        disk.files[index] = Contents {
            bytes: bytes.to_vec(),
            durable: bytes.to_vec(),
        };
        disk.durable_names.insert(path.to_path_buf(), index);
    }

    /// An independent copy of this file system as it is now (open files stay with this one).
    pub fn snapshot(&self) -> MemoryStorage {
        let disk = self.disk();
        let copy = Disk {
            files: disk
                .files
                .iter()
                .map(|f| Contents {
                    bytes: f.bytes.clone(),
                    durable: f.durable.clone(),
                })
                .collect(),
            names: disk.names.clone(),
            durable_names: disk.durable_names.clone(),
            boots: disk.boots,
            dead: disk.dead,
            ..Disk::default()
        };
        MemoryStorage {
            disk: Arc::new(Mutex::new(copy)),
        }
    }

    /// Mutating steps done since the device was powered on (or restarted).
    pub fn steps(&self) -> u64 {
        self.disk().steps
    }

    /// Lets `steps` more mutating steps happen, then the power fails.
    pub fn cut_power_after(&self, steps: u64) {
        let mut disk = self.disk();
        disk.cut_at = Some(disk.steps + steps);
    }

    /// Lets `steps` more mutating steps happen; the next one fails with `error`, without effect
    /// (the device stays powered).
    pub fn fail_after(&self, steps: u64, error: io::Error) {
        let mut disk = self.disk();
        disk.fault = Some((disk.steps + steps, error));
    }

    /// Whether the power failed.
    pub fn is_dead(&self) -> bool {
        self.disk().dead
    }

    /// Powers the device off (if it was not already) and on: what was not durable is lost, and
    /// files opened before cannot be used.
    pub fn power_cycle(&self) {
        let mut disk = self.disk();
        disk.names = disk.durable_names.clone();
        for file in &mut disk.files {
            file.bytes = file.durable.clone();
        }
        disk.restarted();
    }

    /// The process restarts, the system does not: nothing is lost, files opened before cannot
    /// be used.
    pub fn restart(&self) {
        self.disk().restarted();
    }
}

impl Disk {
    fn restarted(&mut self) {
        self.boots += 1;
        self.steps = 0;
        self.cut_at = None;
        self.fault = None;
        self.dead = false;
    }
}

/// A file open in a [`MemoryStorage`].
#[derive(Debug)]
pub struct MemoryFile {
    storage: MemoryStorage,
    index: usize,
    boot: u64,
}

impl MemoryFile {
    /// A mutating step on the file's contents.
    fn step(&mut self, change: impl FnOnce(&mut Contents)) -> io::Result<()> {
        let mut disk = self.storage.disk();
        if disk.boots != self.boot {
            return Err(io::Error::other("file opened before the device restarted"));
        }
        disk.step()?;
        change(&mut disk.files[self.index]);
        Ok(())
    }
}

impl StorageFile for MemoryFile {
    fn write_all_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        self.step(|file| {
            let end = offset + bytes.len();
            if file.bytes.len() < end {
                file.bytes.resize(end, 0);
            }
            file.bytes[offset..end].copy_from_slice(bytes);
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.step(|file| file.bytes.resize(len, 0))
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.step(|file| file.durable = file.bytes.clone())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Storage for MemoryStorage {
    type File = MemoryFile;
    type Bytes = Vec<u8>;

    fn open(&self, path: &Path) -> io::Result<MemoryFile> {
        let mut disk = self.disk();
        disk.step()?;
        let index = disk.open(path);
        Ok(MemoryFile {
            storage: self.clone(),
            index,
            boot: disk.boots,
        })
    }

    fn create(&self, path: &Path) -> io::Result<MemoryFile> {
        let mut disk = self.disk();
        disk.step()?;
        let index = disk.open(path);
        disk.files[index].bytes.clear();
        Ok(MemoryFile {
            storage: self.clone(),
            index,
            boot: disk.boots,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let disk = self.disk();
        Ok(disk.files[disk.file(path)?].bytes.clone())
    }

    fn map(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.read(path)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let disk = self.disk();
        Ok(disk.files[disk.file(path)?].bytes.len() as u64)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.file(from)?;
        disk.step()?;
        if let Some(index) = disk.names.remove(from) {
            disk.names.insert(to.to_path_buf(), index);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk();
        disk.step()?;
        let Disk {
            names,
            durable_names,
            ..
        } = &mut *disk;
        durable_names.retain(|path, _| path.parent() != Some(dir));
        durable_names.extend(
            names
                .iter()
                .filter(|(path, _)| path.parent() == Some(dir))
                .map(|(path, &index)| (path.clone(), index)),
        );
        Ok(())
    }

    fn free_space(&self, _dir: &Path) -> io::Result<u64> {
        self.disk().alive()?;
        Ok(FREE_SPACE)
    }
}
