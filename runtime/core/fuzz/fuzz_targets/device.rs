//! Run: cd runtime/core && cargo +nightly fuzz run device -- -max_total_time=60
//!
//! Arbitrary input into the device's state machine, as a driver would give it: bytes from the
//! line, the passing of time, text from the model, the ends of replies, stalled writes and rate
//! switches that work or fail. It never panics, and what it writes for one step is bounded by
//! the size of the step.
#![no_main]

use core::time::Duration;
use ember_core::device::{Device, LineConfig, Model, Output, ReplyEnd, Settings};
use ember_core::flash::Slot;
use ember_core::protocol::{self, EndReason, Hello, MAX_FRAME, PROTOCOL_VERSION};
use ember_core::sampler::SamplingConfig;
use libfuzzer_sys::fuzz_target;

const RATES: [u32; 3] = [115_200, 921_600, 3_000_000];

fn device() -> Device {
    let config = LineConfig {
        baud: 115_200,
        max_baud: 921_600,
        rates: &RATES,
        idle_timeout: Some(Duration::from_secs(30)),
    };
    let model = Model {
        hello: Hello {
            protocol_version: PROTOCOL_VERSION,
            model_name: protocol::truncated("fuzz"),
            model_hash: [0; 32],
            context_length: 512,
            max_frame: MAX_FRAME as u32,
            slot: Some(Slot::A),
            last_flash: None,
            max_baud: 0,
        },
        settings: Settings {
            sampling: SamplingConfig::default(),
            max_tokens: 16,
            stops: vec!["\n\n".into()],
        },
        system: None,
    };
    Device::new(config, model, Duration::ZERO)
}

fuzz_target!(|data: &[u8]| {
    let mut device = device();
    let mut now = Duration::ZERO;
    // Steps: a length byte, then that many bytes; the first byte of a step picks what it is.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (step, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let Some((&op, body)) = step.split_first() else {
            continue;
        };
        match op % 6 {
            0 => now += Duration::from_millis(u64::from(op) * 400),
            1 => device.reply_text(now, &String::from_utf8_lossy(body)),
            2 if device.replying() => {
                let reason = device.halt().unwrap_or(EndReason::Eos);
                device.reply_ended(
                    now,
                    ReplyEnd::Finished {
                        reason,
                        prompt_tokens: 1,
                        generated_tokens: 1,
                        decode_tokens_per_second: 1.0,
                        turns_dropped: 0,
                        context: Default::default(),
                    },
                );
            }
            3 => device.write_stalled(),
            4 => device.handle_timeout(now),
            _ => {
                let mut at = 0;
                while at < body.len() {
                    at += device.receive(now, &body[at..]);
                }
            }
        }
        let mut written = 0;
        while let Some(output) = device.poll() {
            match output {
                Output::Write(bytes) => written += bytes.len(),
                Output::SwitchBaud(_) => device.baud_switched(now, op & 8 != 0),
                _ => {}
            }
        }
        assert!(
            written <= 8 * MAX_FRAME + 4 * step.len() * MAX_FRAME,
            "{written} bytes for a step of {}",
            step.len()
        );
    }
});
