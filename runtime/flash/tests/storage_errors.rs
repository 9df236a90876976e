//! The file system failing mid-flash: a typed error (`Storage` on the wire) naming the action
//! and the file, the device still serving its old slot, and a new flash completing once the
//! storage works again. EIO is injected at every step of a flash on [`MemoryStorage`]; ENOSPC
//! comes from a real, full tmpfs (mounting one needs root: without it that test says so and
//! passes without checking).

mod common;

use common::{Flash, booted, image};
use ember_core::flash::{FLASH_BLOCK, Slot};
use ember_core::protocol::{ErrorCode, Event, Request};
use ember_flash::{FlashError, MemoryStorage, SlotDir, StdStorage, Storage};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const DIR: &str = "/var/lib/ember";

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

/// Receives, commits and activates `flash`.
fn flash_and_activate<S: Storage>(slots: &mut SlotDir<S>, flash: &Flash) -> Result<(), FlashError> {
    flash.transfer(slots)?;
    slots.commit(|| {})?;
    slots.activate()?;
    Ok(())
}

#[test]
fn an_io_error_at_any_step_of_a_flash_is_reported_and_the_next_flash_completes() {
    let old = image("old", 50_000);
    let new = Flash::new(image("new", 300_000));
    let start = MemoryStorage::new();
    start.install(&Path::new(DIR).join("slot-a.ember"), &old);
    drop(SlotDir::open_with(start.clone(), Path::new(DIR), None).unwrap());
    let whole = start.snapshot();
    let mut slots = SlotDir::open_with(whole.clone(), Path::new(DIR), None).unwrap();
    flash_and_activate(&mut slots, &new).unwrap();
    let total = whole.steps();

    for n in 0..total {
        let disk = start.snapshot();
        let mut slots = SlotDir::open_with(disk.clone(), Path::new(DIR), None).unwrap();
        disk.fail_after(n, eio());
        let e = flash_and_activate(&mut slots, &new).expect_err("the step failed");
        assert_eq!(e.code(), ErrorCode::Storage, "step {n}: {e}");
        let message = e.to_string();
        assert!(
            message.starts_with("cannot ")
                && message.contains(DIR)
                && message.ends_with("Input/output error (os error 5)"),
            "step {n}: {message}"
        );
        // The device still serves its old slot; the host's next flash completes.
        assert!(booted(&disk, &slots) == old, "step {n}");
        flash_and_activate(&mut slots, &new).unwrap_or_else(|e| panic!("step {n}: {e}"));
        drop(slots);
        disk.power_cycle();
        let slots = SlotDir::open_with(disk.clone(), Path::new(DIR), None).unwrap();
        assert!(booted(&disk, &slots) == new.bytes, "step {n}");
    }
    eprintln!("EIO injected at each of {total} steps");
}

/// A tmpfs of `size` mounted at `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        status.is_ok_and(|s| s.success()).then(|| Tmpfs(dir.into()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_file_system_mid_transfer_is_reported_and_the_flash_completes_once_there_is_room() {
    let root = std::env::temp_dir().join(format!("ember-enospc-{}", std::process::id()));
    let Some(tmpfs) = Tmpfs::mount(&root, "4m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs at {} (needs root)",
            root.display()
        );
        return;
    };
    let dir = tmpfs.0.join("slots");
    std::fs::create_dir(&dir).unwrap();
    let old = image("old", 50_000);
    let new = Flash::new(image("new", 576_000));
    std::fs::write(dir.join("slot-a.ember"), &old).unwrap();
    let mut slots = SlotDir::open(&dir, None).unwrap();

    // The transfer starts with room for the image; then something else fills the disk.
    let mut events = Vec::new();
    slots.answer(&Request::FlashBegin(new.begin().clone()), &mut |e| {
        events.push(e.clone())
    });
    assert!(matches!(events[..], [Event::FlashNext(_)]), "{events:?}");
    let filled_at = 10 * FLASH_BLOCK as u64;
    for chunk in new.chunks_from(0).filter(|c| c.offset < filled_at) {
        slots.answer(&Request::FlashChunk(chunk.clone()), &mut |_| {});
    }
    let filler = tmpfs.0.join("filler");
    let full = std::fs::write(&filler, vec![0u8; 4 << 20]).expect_err("the tmpfs fills up");
    assert_eq!(full.raw_os_error(), Some(28));
    let mut events = Vec::new();
    for chunk in new.chunks_from(filled_at) {
        slots.answer(&Request::FlashChunk(chunk.clone()), &mut |e| {
            events.push(e.clone())
        });
        if events.iter().any(|e| matches!(e, Event::Error { .. })) {
            break;
        }
    }
    let slot_b = dir.join("slot-b.ember");
    let expected = format!(
        "cannot write {}: No space left on device (os error 28)",
        slot_b.display()
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Error { code: ErrorCode::Storage, detail, .. } if detail.as_str() == expected
        )),
        "{events:?}"
    );

    // The device serves its old slot, also after a restart on the full disk.
    assert!(booted(&StdStorage, &slots) == old);
    let restarted = SlotDir::open(&dir, None).unwrap();
    assert_eq!(restarted.table().active, Slot::A);
    assert!(booted(&StdStorage, &restarted) == old);
    drop(restarted);

    // Room again: the host's next flash resumes and completes.
    std::fs::remove_file(&filler).unwrap();
    flash_and_activate(&mut slots, &new).unwrap();
    drop(slots);
    let slots = SlotDir::open(&dir, None).unwrap();
    assert_eq!(slots.table().active, Slot::B);
    assert!(booted(&StdStorage, &slots) == new.bytes);
}
