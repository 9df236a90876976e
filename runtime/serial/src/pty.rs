//! PTY pairs: a serial line inside one machine, for development and tests.

use crate::tty::{Tty, make_raw};
use rustix::fs::{Mode, OFlags, open};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A pseudo-terminal: a master side and a device path (`/dev/pts/N`) that behaves like a serial
/// port for whoever opens it (picocom, `ember chat --port`).
#[derive(Debug)]
pub struct PtyPair {
    master: OwnedFd,
    slave: OwnedFd,
    path: PathBuf,
}

impl PtyPair {
    /// Creates a pair; its device side starts in raw mode.
    pub fn open() -> std::io::Result<PtyPair> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        make_raw(&slave, None)?;
        Ok(PtyPair {
            master,
            slave,
            path,
        })
    }

    /// The device path the other side opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the master side (blocking), for a thread of its own.
    pub(crate) fn master_clone(&self) -> std::io::Result<OwnedFd> {
        self.master.try_clone()
    }

    /// The master side as a [`Tty`]. The device side stays open inside it, so the line does not
    /// read as hung up while no one has the device open.
    pub fn into_master(self) -> std::io::Result<Tty> {
        let name = format!("{} (master)", self.path.display());
        Ok(Tty::from_fd(self.master, Some(self.slave), name)?)
    }
}
