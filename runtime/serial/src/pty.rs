//! PTY pairs: a serial line inside one machine, for development and tests.

use crate::tty::{Tty, TtyError, make_raw};
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

    /// Points the symbolic link `link` at the device path, replacing it atomically (so a host
    /// finds a restarted device at the same path, like a serial adapter plugged back in).
    pub fn link(&self, link: &Path) -> std::io::Result<()> {
        let mut temp = link.as_os_str().to_owned();
        temp.push(".new");
        let temp = PathBuf::from(temp);
        let _ = std::fs::remove_file(&temp);
        std::os::unix::fs::symlink(&self.path, &temp)?;
        std::fs::rename(&temp, link)
    }

    /// Another descriptor of the master side (blocking), for a thread of its own.
    pub(crate) fn master_clone(&self) -> std::io::Result<OwnedFd> {
        self.master.try_clone()
    }

    /// Another descriptor of the device side, to read the settings whoever opened it chose.
    pub(crate) fn slave_clone(&self) -> std::io::Result<OwnedFd> {
        self.slave.try_clone()
    }

    /// Sets the device side's baud rate (what a program that opens it finds).
    pub(crate) fn set_baud(&self, baud: u32) -> std::io::Result<()> {
        Ok(make_raw(&self.slave, Some(baud))?)
    }

    /// The master side as a [`Tty`]. The device side stays open inside it, so the line does not
    /// read as hung up while no one has the device open.
    pub fn into_master(self) -> std::io::Result<Tty> {
        let name = format!("{} (master)", self.path.display());
        Ok(Tty::from_fd(self.master, Some(self.slave), name)?)
    }
}

/// Opens a device's serial line: the serial device `path` at `baud`, or without one a new PTY
/// pair (development) linked from `link`, whose device path goes to `announce` for whoever will
/// open it.
pub fn open_line(
    path: Option<&Path>,
    baud: u32,
    link: Option<&Path>,
    announce: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<Tty, TtyError> {
    if let Some(path) = path {
        return Tty::open(path, baud);
    }
    let pty = |source| TtyError::Open {
        port: "a new PTY pair".into(),
        source,
    };
    let pair = PtyPair::open().map_err(pty)?;
    if let Some(link) = link {
        pair.link(link).map_err(|source| TtyError::Open {
            port: format!(
                "{} (linking {} to it)",
                pair.path().display(),
                link.display()
            ),
            source,
        })?;
    }
    announce(pair.path()).map_err(pty)?;
    pair.into_master().map_err(pty)
}
