//! The power fails at every step of a flash, deterministically: a device on a simulated file
//! system ([`MemoryStorage`], worst-case durability: only synced contents and synced directory
//! entries survive) loses power after its Nth mutating step, for every N from 0 to the number
//! of steps of the whole flash. Powered on again, it must open its slot directory, boot an
//! image whose every section hash matches — the old one, or the new one once activated, never
//! neither — and take a new flash to the end.

mod common;

use common::{Flash, booted, image};
use ember_core::flash::{FlashOutcome, SlotTable};
use ember_core::protocol::ErrorCode;
use ember_flash::{FlashError, MemoryStorage, PERSIST_EVERY, SlotDir, Storage, TABLE_FILE};
use std::path::Path;
use std::sync::OnceLock;

const DIR: &str = "/var/lib/ember";

/// The image a device starts with, and the one flashed (2.2 MiB: 35 blocks, progress recorded
/// at 1 MiB, 2 MiB and the end).
fn images() -> &'static (Vec<u8>, Flash) {
    static IMAGES: OnceLock<(Vec<u8>, Flash)> = OnceLock::new();
    IMAGES.get_or_init(|| (image("old", 50_000), Flash::new(image("new", 576_000))))
}

/// A device that was installed with the old image in slot A (and has never started).
fn installed() -> MemoryStorage {
    let disk = MemoryStorage::new();
    disk.install(&Path::new(DIR).join("slot-a.ember"), &images().0);
    disk
}

fn open(disk: &MemoryStorage) -> Result<SlotDir<MemoryStorage>, FlashError> {
    SlotDir::open_with(disk.clone(), Path::new(DIR), None)
}

/// What a device does from power-on, step by step; `marks` gets the number of steps done
/// after each phase.
type Run = fn(&MemoryStorage, &mut Vec<u64>) -> Result<(), FlashError>;

/// Starts, receives the new image, commits (marks it for its trial), activates it.
fn flash_and_activate(disk: &MemoryStorage, marks: &mut Vec<u64>) -> Result<(), FlashError> {
    let mut slots = open(disk)?;
    marks.push(disk.steps());
    images().1.transfer(&mut slots)?;
    marks.push(disk.steps());
    slots.commit(|| {})?;
    marks.push(disk.steps());
    slots.activate()?;
    Ok(())
}

/// Starts, receives the new image, commits, and rolls back (the self-test failed).
fn flash_and_roll_back(disk: &MemoryStorage, marks: &mut Vec<u64>) -> Result<(), FlashError> {
    let mut slots = open(disk)?;
    marks.push(disk.steps());
    images().1.transfer(&mut slots)?;
    marks.push(disk.steps());
    slots.commit(|| {})?;
    marks.push(disk.steps());
    slots.roll_back(FlashOutcome::SelfTestFailed)
}

/// How a device comes back after its power failed.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The power failed: what was not synced is lost.
    Power,
    /// Only the process died (killed, crashed): the system kept everything.
    Crash,
}

/// What the cut points of one sequence showed.
#[derive(Debug, Default)]
struct Covered {
    cut_points: u64,
    booted_new: u64,
    resumed: u64,
    trial_interrupted: u64,
}

/// Runs `run` on copies of `start`, cut after every step from 0 to all of them; after each cut
/// checks what the device boots (`new_from`: the first phase mark after which the new image
/// must be the one booted, `None`: never) and that a new flash then completes.
fn cut_everywhere(
    name: &str,
    start: &MemoryStorage,
    run: Run,
    cut: Cut,
    new_from: Option<usize>,
) -> Covered {
    let (old, new) = images();
    let whole = start.snapshot();
    let mut marks = Vec::new();
    run(&whole, &mut marks).expect("the flash completes without a cut");
    let total = whole.steps();
    marks.push(total);
    // A phase ends with a record of the slot table: its directory sync makes it durable, but a
    // crash already keeps its rename, the step before.
    let recorded = |phase: usize| match cut {
        Cut::Power => marks[phase],
        Cut::Crash => marks[phase] - 1,
    };
    let mut covered = Covered::default();
    for n in 0..=total {
        let disk = start.snapshot();
        disk.cut_power_after(n);
        let result = run(&disk, &mut Vec::new());
        assert_eq!(disk.is_dead(), n < total, "cut after step {n} of {total}");
        if n < total {
            let e = result.expect_err("the power failed");
            assert!(matches!(e, FlashError::Io { .. }), "cut at {n}: {e}");
            assert_eq!(e.code(), ErrorCode::Storage);
        } else {
            result.expect("every step before the cut");
        }
        match cut {
            Cut::Power => disk.power_cycle(),
            Cut::Crash => disk.restart(),
        }

        // Powered on: the table decodes and the device boots an intact image.
        let mut slots = open(&disk).unwrap_or_else(|e| panic!("cut at {n}: {e}"));
        let image = booted(&disk, &slots);
        let expect_new = new_from.is_some_and(|phase| n >= recorded(phase));
        if expect_new {
            assert!(
                image == new.bytes,
                "cut after step {n} of {total}: the new image"
            );
            covered.booted_new += 1;
        } else {
            assert!(
                image == *old,
                "cut after step {n} of {total}: the old image"
            );
        }
        // Power lost during the trial (the commit's record is durable): the old slot, and why.
        let trial_recorded = n >= recorded(2) && !expect_new;
        if trial_recorded && new_from.is_some() {
            assert_eq!(slots.table().last, Some(FlashOutcome::TrialInterrupted));
            covered.trial_interrupted += 1;
        }

        // A new flash of the image completes (resuming what was recorded) and boots it.
        let resumed = images().1.transfer(&mut slots).expect("a new flash");
        if resumed > 0 {
            covered.resumed += 1;
        }
        slots.commit(|| {}).expect("commit");
        slots.activate().expect("activate");
        drop(slots);
        disk.power_cycle();
        let slots = open(&disk).expect("open after the new flash");
        assert!(booted(&disk, &slots) == new.bytes, "cut at {n}: new image");
        covered.cut_points += 1;
    }
    eprintln!("{name}, {cut:?}: {total} steps, {covered:?}");
    covered
}

#[test]
fn a_power_cut_at_any_step_of_a_flash_boots_an_intact_image() {
    // A first start (the table is made), the transfer, the commit, activation.
    let covered = cut_everywhere(
        "flash",
        &installed(),
        flash_and_activate,
        Cut::Power,
        Some(3),
    );
    assert!(covered.cut_points > 70, "{covered:?}");
    assert_eq!(covered.booted_new, 1);
    assert!(covered.resumed > 0 && covered.trial_interrupted > 0);
}

#[test]
fn a_crash_at_any_step_of_a_flash_boots_an_intact_image() {
    let covered = cut_everywhere(
        "flash",
        &installed(),
        flash_and_activate,
        Cut::Crash,
        Some(3),
    );
    // The activation's rename is kept: the cut before its directory sync boots the new image.
    assert_eq!(covered.booted_new, 2);
}

#[test]
fn a_power_cut_while_a_transfer_resumes_boots_an_intact_image() {
    // A transfer cut off past its first record (1 MiB), then powered on again.
    let disk = installed();
    let mut slots = open(&disk).unwrap();
    let (new, stop) = (&images().1, PERSIST_EVERY + 300_000);
    slots.begin(new.begin()).unwrap();
    for chunk in new.chunks_from(0).take_while(|c| c.offset < stop) {
        slots.chunk(chunk).unwrap();
    }
    drop(slots);
    disk.power_cycle();
    let table = disk.read(&Path::new(DIR).join(TABLE_FILE)).unwrap();
    let recorded = SlotTable::decode(&table).unwrap();
    assert_eq!(recorded.incoming.unwrap().stored, PERSIST_EVERY);

    let covered = cut_everywhere(
        "resumed flash",
        &disk,
        flash_and_activate,
        Cut::Power,
        Some(3),
    );
    // Every new flash resumes, but the one after the activation (into the other slot).
    assert_eq!(covered.resumed, covered.cut_points - 1, "{covered:?}");
}

#[test]
fn a_power_cut_during_a_roll_back_boots_the_old_image() {
    let disk = installed();
    drop(open(&disk).unwrap());
    let covered = cut_everywhere("roll-back", &disk, flash_and_roll_back, Cut::Power, None);
    assert_eq!(covered.booted_new, 0);
}
