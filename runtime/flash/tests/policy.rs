//! Which images a device takes (`ember_flash::policy`), on a simulated slot directory
//! ([`MemoryStorage`]) with real images: no image older than the active one unless the
//! operator's `allow-downgrade` file exists, and a signature by any key of `flash.pub`.

mod common;

use common::{Flash, booted, key, versioned_image};
use ember_core::protocol::{ErrorCode, Event, FlashStage, Request};
use ember_flash::policy::{ALLOW_DOWNGRADE_FILE, Downgrade};
use ember_flash::{FlashError, KEY_FILE, MemoryStorage, SlotDir};
use std::path::Path;

const DIR: &str = "/var/lib/ember";

/// A device installed with `image` in slot A, and `files` (name, text) in its slot directory.
fn device(image: &[u8], files: &[(&str, &str)]) -> MemoryStorage {
    let disk = MemoryStorage::new();
    disk.install(&Path::new(DIR).join("slot-a.ember"), image);
    for (name, text) in files {
        disk.install(&Path::new(DIR).join(name), text.as_bytes());
    }
    disk
}

fn open(disk: &MemoryStorage) -> Result<SlotDir<MemoryStorage>, FlashError> {
    SlotDir::open_with(disk.clone(), Path::new(DIR), None)
}

/// What the device answers `request` with, and the slot it then tries (after a commit).
fn answer(
    slots: &mut SlotDir<MemoryStorage>,
    request: &Request,
) -> (Vec<Event>, Option<ember_core::flash::Slot>) {
    let mut events = Vec::new();
    let trial = slots.answer(request, &mut |event| events.push(event.clone()));
    (events, trial)
}

/// The one error among `events`: its code and detail; `request` is left to the device.
fn error_of(events: &[Event]) -> (ErrorCode, String) {
    let errors: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            Event::Error {
                code,
                detail,
                request,
            } => {
                assert_eq!(
                    *request, None,
                    "the device names the request, not the slots"
                );
                Some((*code, detail.to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    errors[0].clone()
}

/// Receives, commits and activates `flash`.
fn flash_and_activate(slots: &mut SlotDir<MemoryStorage>, flash: &Flash) -> Result<(), FlashError> {
    flash.transfer(slots)?;
    slots.commit(|| {})?;
    slots.activate()?;
    Ok(())
}

#[test]
fn an_older_image_is_refused_as_a_downgrade_and_the_device_keeps_its_model() {
    let active = versioned_image("v2", 20_000, 2);
    let older = Flash::new(versioned_image("v1", 20_000, 1));
    let disk = device(&active, &[]);
    let mut slots = open(&disk).unwrap();
    let steps = disk.steps();

    // Refused at the begin, from the header, before anything is written.
    let (events, _) = answer(&mut slots, &Request::FlashBegin(older.begin().clone()));
    let (code, detail) = error_of(&events);
    assert_eq!(code, ErrorCode::Downgrade);
    assert!(
        detail.starts_with("image version 1 is older than the active image's version 2"),
        "{detail}"
    );
    assert!(matches!(
        slots.begin(older.begin()),
        Err(FlashError::Downgrade(Downgrade {
            image: 1,
            active: 2
        }))
    ));
    assert_eq!(disk.steps(), steps, "a refused begin writes nothing");
    assert_eq!(slots.table().incoming, None);
    assert!(booted(&disk, &slots) == active);

    // A begin whose header claims a later version is taken, but the commit reads the version
    // from the verified image: refused, the transfer forgotten, the old slot still active.
    let mut lying = older.begin().clone();
    lying.header[56] = 3;
    slots.begin(&lying).unwrap();
    for chunk in older.chunks_from(0) {
        slots.chunk(chunk).unwrap();
    }
    let (events, trial) = answer(&mut slots, &Request::FlashCommit);
    assert_eq!(trial, None);
    assert_eq!(
        events[0],
        Event::FlashStage {
            stage: FlashStage::Verifying
        }
    );
    let (code, detail) = error_of(&events);
    assert_eq!(code, ErrorCode::Downgrade, "{detail}");
    assert_eq!(slots.table().incoming, None);
    assert_eq!(slots.table().trial, None);
    assert!(booted(&disk, &slots) == active);
    drop(slots);
    disk.power_cycle();
    let slots = open(&disk).unwrap();
    assert!(booted(&disk, &slots) == active, "after a restart too");
}

#[test]
fn the_same_version_and_later_ones_are_taken() {
    let active = versioned_image("v2", 20_000, 2);
    let disk = device(&active, &[]);
    let mut slots = open(&disk).unwrap();
    // The same build again, or another image of the same version.
    let same = Flash::new(versioned_image("v2 again", 20_000, 2));
    flash_and_activate(&mut slots, &same).unwrap();
    assert!(booted(&disk, &slots) == same.bytes);
    let later = Flash::new(versioned_image("v7", 20_000, 7));
    flash_and_activate(&mut slots, &later).unwrap();
    assert!(booted(&disk, &slots) == later.bytes);
    // Images made before versions (0) are now downgrades.
    let unversioned = Flash::new(versioned_image("v0", 20_000, 0));
    assert!(matches!(
        slots.begin(unversioned.begin()),
        Err(FlashError::Downgrade(Downgrade {
            image: 0,
            active: 7
        }))
    ));
}

#[test]
fn an_image_made_before_versions_takes_any_version() {
    let active = versioned_image("v0", 20_000, 0);
    let disk = device(&active, &[]);
    let mut slots = open(&disk).unwrap();
    let first = Flash::new(versioned_image("v1", 20_000, 1));
    flash_and_activate(&mut slots, &first).unwrap();
    assert!(booted(&disk, &slots) == first.bytes);
}

#[test]
fn the_operators_allow_downgrade_file_lets_an_older_image_in() {
    let active = versioned_image("v5", 20_000, 5);
    let older = Flash::new(versioned_image("v3", 20_000, 3));
    // Any content: only its presence counts.
    let disk = device(&active, &[(ALLOW_DOWNGRADE_FILE, "")]);
    let mut slots = open(&disk).unwrap();
    flash_and_activate(&mut slots, &older).unwrap();
    assert!(booted(&disk, &slots) == older.bytes);

    // The file is looked for at each flash: the same device without it refuses.
    let disk = device(&active, &[]);
    let mut slots = open(&disk).unwrap();
    assert!(matches!(
        flash_and_activate(&mut slots, &older),
        Err(FlashError::Downgrade(_))
    ));
    disk.install(
        &Path::new(DIR).join(ALLOW_DOWNGRADE_FILE),
        b"until the fleet is fixed\n",
    );
    flash_and_activate(&mut slots, &older).unwrap();
    assert!(booted(&disk, &slots) == older.bytes);
}

#[test]
fn an_image_signed_by_any_key_of_flash_pub_is_taken_and_no_other() {
    let active = versioned_image("old", 20_000, 1);
    let (old_key, old_public) = key(1);
    let (new_key, new_public) = key(2);
    let (stranger, _) = key(3);
    let keys = format!(
        "# the fleet's key\n{old_public}\n\n# its successor, from 2026-12\n  {new_public}  \n"
    );
    let disk = device(&active, &[(KEY_FILE, &keys)]);
    let mut slots = open(&disk).unwrap();
    assert!(slots.requires_signature());
    let image = || Flash::new(versioned_image("new", 20_000, 2));

    // Unknown key, and no signature: SignatureRejected, and nothing changes.
    for flash in [image().signed(&stranger), image()] {
        let (events, _) = answer(&mut slots, &Request::FlashBegin(flash.begin().clone()));
        let (code, detail) = error_of(&events);
        assert_eq!(code, ErrorCode::SignatureRejected, "{detail}");
        assert_eq!(slots.table().incoming, None);
        assert!(booted(&disk, &slots) == active);
    }

    // The second key (rotated in), then the first (not yet rotated out).
    let rotated = image().signed(&new_key);
    flash_and_activate(&mut slots, &rotated).unwrap();
    assert!(booted(&disk, &slots) == rotated.bytes);
    let again = Flash::new(versioned_image("newer", 20_000, 3)).signed(&old_key);
    flash_and_activate(&mut slots, &again).unwrap();
    assert!(booted(&disk, &slots) == again.bytes);
}

#[test]
fn a_bad_line_in_flash_pub_is_named_and_the_device_does_not_start() {
    let active = versioned_image("old", 20_000, 1);
    let (_, public) = key(1);
    let cases = [
        (
            format!("# fleet\n{public}\n\n{}x\n", &public[..63]),
            "line 4 is not an ed25519 public key (64 hex digits): not hex",
        ),
        (
            format!("{public}\n{}\n", &public[..62]),
            "line 2 is not an ed25519 public key (64 hex digits): not 32 bytes (64 hex digits)",
        ),
        (
            format!("{public} {public}\n"),
            "line 1 is not an ed25519 public key (64 hex digits): not hex",
        ),
        (
            "# keys to come\n\n".to_string(),
            "it holds no key (one ed25519 public key of 64 hex digits per line)",
        ),
    ];
    for (text, reason) in cases {
        let disk = device(&active, &[(KEY_FILE, &text)]);
        let e = open(&disk).err().expect("a bad key file");
        assert!(matches!(e, FlashError::BadKey { .. }), "{e}");
        assert_eq!(e.to_string(), format!("{DIR}/{KEY_FILE}: {reason}"));
    }
    // Bytes that are not UTF-8 are a bad line too.
    let disk = MemoryStorage::new();
    disk.install(&Path::new(DIR).join("slot-a.ember"), &active);
    let mut text = format!("{public}\n").into_bytes();
    text.extend_from_slice(b"\xff\xfe\n");
    disk.install(&Path::new(DIR).join(KEY_FILE), &text);
    let e = open(&disk).err().expect("a bad key file");
    assert!(
        e.to_string()
            .ends_with("line 2 is not an ed25519 public key (64 hex digits): not hex"),
        "{e}"
    );
}
