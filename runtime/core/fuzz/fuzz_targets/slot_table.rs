//! Run: cd runtime/core && cargo +nightly fuzz run slot_table fuzz/seeds/slot_table -- -max_len=256
//!
//! Arbitrary bytes as the device's `slots.state` file through `SlotTable::decode`: it never
//! panics, and a table it accepts (and each table derived from it: at boot, activated, rolled
//! back) encodes within `MAX_SLOT_TABLE` bytes to a file that decodes to the same table and
//! re-encodes to the same bytes.
#![no_main]

use ember_core::flash::{FlashOutcome, MAX_SLOT_TABLE, SlotTable};
use libfuzzer_sys::fuzz_target;

fn round_trip(table: &SlotTable) {
    let mut out = [0u8; MAX_SLOT_TABLE];
    let len = table.encode(&mut out);
    assert!(len > 8 && len <= MAX_SLOT_TABLE, "encoded length {len}");
    let back = SlotTable::decode(&out[..len]).expect("an encoded table decodes");
    assert_eq!(&back, table);
    let mut again = [0u8; MAX_SLOT_TABLE];
    let len2 = back.encode(&mut again);
    assert_eq!(out[..len], again[..len2]);
}

fuzz_target!(|data: &[u8]| {
    let Ok(table) = SlotTable::decode(data) else {
        return;
    };
    round_trip(&table);
    let mut out = [0u8; MAX_SLOT_TABLE];
    let len = table.encode(&mut out);
    assert!(
        len <= data.len(),
        "canonical encoding longer than the input"
    );
    round_trip(&table.at_boot());
    round_trip(&table.activated());
    round_trip(&table.rolled_back(FlashOutcome::SelfTestFailed));
    assert!(table.at_boot().trial.is_none());
    if let Some(incoming) = &table.incoming {
        assert_eq!(
            table.resume_point(&incoming.sha256, incoming.image_len),
            Some(incoming.stored)
        );
    }
});
