//! The status LED: what the device is doing, as blink patterns.

use core::fmt;
use core::time::Duration;
use embedded_hal::digital::OutputPin;
use ember_core::device::Activity;

/// What the device is doing, as the status LED shows it.
///
/// Each state has a pattern of lit and dark phases that repeats from the moment the state began:
///
/// | state | pattern | one cycle |
/// |---|---|---|
/// | [`Status::Ready`] | steady on | — |
/// | [`Status::Generating`] | fast blink: 125 ms on, 125 ms off (4 per second) | 250 ms |
/// | [`Status::Flashing`] | slow blink: 500 ms on, 500 ms off (1 per second) | 1 s |
/// | [`Status::Error`] | SOS (`··· ——— ···`): dots 150 ms, dashes 450 ms, 150 ms between them, 450 ms between letters, 1050 ms after the last S | 5.1 s |
///
/// Every pattern begins lit, so a change of state shows at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Idle, with a model loaded, waiting for a prompt.
    Ready,
    /// Reading a prompt or writing a reply.
    Generating,
    /// Receiving or checking a model image.
    Flashing,
    /// Something failed and needs a person.
    Error,
}

/// The SOS pattern's unit (a dot), in milliseconds.
const SOS_UNIT: u32 = 150;

/// Phases in milliseconds, alternately lit and dark, lit first; empty for steady on.
const fn phases(status: Status) -> &'static [u32] {
    const DOT: u32 = SOS_UNIT;
    const DASH: u32 = 3 * SOS_UNIT;
    const WORD_GAP: u32 = 7 * SOS_UNIT;
    match status {
        Status::Ready => &[],
        Status::Generating => &[125, 125],
        Status::Flashing => &[500, 500],
        #[rustfmt::skip]
        Status::Error => &[
            DOT, DOT, DOT, DOT, DOT, DASH,
            DASH, DOT, DASH, DOT, DASH, DASH,
            DOT, DOT, DOT, DOT, DOT, WORD_GAP,
        ],
    }
}

/// What a device does, as its LED shows it.
impl From<Activity> for Status {
    fn from(activity: Activity) -> Status {
        match activity {
            Activity::Ready => Status::Ready,
            Activity::Generating => Status::Generating,
            Activity::Flashing => Status::Flashing,
            Activity::Error => Status::Error,
        }
    }
}

impl Status {
    /// Whether the LED is lit `elapsed` after this state began (the table above, repeating).
    pub fn is_lit(self, elapsed: Duration) -> bool {
        let phases = phases(self);
        let cycle: u32 = phases.iter().sum();
        if cycle == 0 {
            return true;
        }
        let at = (elapsed.as_millis() % u128::from(cycle)) as u32;
        let mut end = 0;
        let passed = phases
            .iter()
            .take_while(|&&length| {
                end += length;
                end <= at
            })
            .count();
        passed % 2 == 0
    }
}

/// A status LED on an output pin, lit when the pin is driven high.
///
/// It has no clock of its own: its caller passes the time (`now`, since any fixed instant) to
/// [`StatusLed::set_state`] and [`StatusLed::tick`], as often as the pattern should be followed
/// (every [`crate::POLL_INTERVAL`], say). The pin is written only when the LED should change.
pub struct StatusLed<P> {
    pin: P,
    /// The state shown and when it began; `None` until the first `set_state` and after `off`.
    shown: Option<(Status, Duration)>,
    /// Whether the pin was last driven high; `None` before the first write and after a failed
    /// one.
    lit: Option<bool>,
}

/// Shows the state and the LED's level, not the pin (which need not be `Debug`).
impl<P> fmt::Debug for StatusLed<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusLed")
            .field("shown", &self.shown)
            .field("lit", &self.lit)
            .finish_non_exhaustive()
    }
}

impl<P: OutputPin> StatusLed<P> {
    /// An LED on `pin`, showing nothing (and not writing the pin) until the first
    /// [`StatusLed::set_state`].
    pub fn new(pin: P) -> Self {
        StatusLed {
            pin,
            shown: None,
            lit: None,
        }
    }

    /// Shows `status` from `now`: a different state starts its pattern from the beginning (lit);
    /// the state already shown goes on with its pattern, so a caller may pass its state on every
    /// pass. Writes the pin if the LED should change.
    pub fn set_state(&mut self, status: Status, now: Duration) -> Result<(), P::Error> {
        if self.status() != Some(status) {
            self.shown = Some((status, now));
        }
        self.tick(now)
    }

    /// Follows the pattern of the state shown: writes the pin if the LED should change at `now`.
    /// After a failed write the next tick writes again.
    pub fn tick(&mut self, now: Duration) -> Result<(), P::Error> {
        let Some((status, since)) = self.shown else {
            return Ok(());
        };
        self.show(status.is_lit(now.saturating_sub(since)))
    }

    /// The state shown, if any.
    pub fn status(&self) -> Option<Status> {
        self.shown.map(|(status, _)| status)
    }

    /// Turns the LED off and shows nothing until the next [`StatusLed::set_state`] (for when the
    /// device stops).
    pub fn off(&mut self) -> Result<(), P::Error> {
        self.shown = None;
        self.show(false)
    }

    fn show(&mut self, lit: bool) -> Result<(), P::Error> {
        if self.lit == Some(lit) {
            return Ok(());
        }
        self.lit = None;
        if lit {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        self.lit = Some(lit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::MockError;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use std::io::ErrorKind;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Where `status`'s pattern changes before `until` ms, and to what, sampled every
    /// millisecond.
    fn changes(status: Status, until: u64) -> Vec<(u64, bool)> {
        let mut changes = vec![(0, status.is_lit(ms(0)))];
        for t in 1..until {
            let lit = status.is_lit(ms(t));
            if lit != changes.last().unwrap().1 {
                changes.push((t, lit));
            }
        }
        changes
    }

    #[test]
    fn ready_is_steady_on() {
        assert_eq!(changes(Status::Ready, 20_000), [(0, true)]);
        assert!(Status::Ready.is_lit(Duration::from_secs(86_400 * 365)));
    }

    #[test]
    fn generating_blinks_125_ms_on_125_off() {
        assert_eq!(
            changes(Status::Generating, 600),
            [
                (0, true),
                (125, false),
                (250, true),
                (375, false),
                (500, true)
            ]
        );
    }

    #[test]
    fn flashing_blinks_500_ms_on_500_off() {
        assert_eq!(
            changes(Status::Flashing, 2100),
            [
                (0, true),
                (500, false),
                (1000, true),
                (1500, false),
                (2000, true)
            ]
        );
    }

    #[test]
    fn error_is_sos_every_5_1_s() {
        let on = |at, length| [(at, true), (at + length, false)];
        let mut expected = Vec::new();
        // S: three dots, 150 ms apart.
        expected.extend(on(0, 150));
        expected.extend(on(300, 150));
        expected.extend(on(600, 150));
        // O: three dashes after a 450 ms gap, 150 ms apart.
        expected.extend(on(1200, 450));
        expected.extend(on(1800, 450));
        expected.extend(on(2400, 450));
        // S again, then 1050 ms dark before the next SOS.
        expected.extend(on(3300, 150));
        expected.extend(on(3600, 150));
        expected.extend(on(3900, 150));
        expected.push((5100, true));
        assert_eq!(changes(Status::Error, 5200), expected);
        assert!(!Status::Error.is_lit(ms(5099)));
        assert!(Status::Error.is_lit(ms(3 * 5100 + 1900)));
    }

    #[test]
    fn every_pattern_begins_lit() {
        for status in [
            Status::Ready,
            Status::Generating,
            Status::Flashing,
            Status::Error,
        ] {
            assert!(status.is_lit(Duration::ZERO), "{status:?}");
        }
    }

    /// A mock pin that expects these levels in turn, and a handle to check it afterwards.
    fn pin(levels: &[State]) -> (Mock, Mock) {
        let expected: Vec<_> = levels.iter().map(|&l| Transaction::set(l)).collect();
        let pin = Mock::new(&expected);
        (pin.clone(), pin)
    }

    #[test]
    fn the_pin_is_written_only_when_the_pattern_changes() {
        use State::{High, Low};
        let (pin, mut check) = pin(&[High, Low, High, Low]);
        let mut led = StatusLed::new(pin);
        led.tick(ms(0)).unwrap(); // nothing to show yet: no write
        led.set_state(Status::Generating, ms(1000)).unwrap();
        for t in (1000..1400).step_by(5) {
            led.tick(ms(t)).unwrap();
        }
        assert_eq!(led.status(), Some(Status::Generating));
        check.done();
    }

    #[test]
    fn a_new_state_restarts_its_pattern_and_the_same_state_does_not() {
        use State::{High, Low};
        let (pin, mut check) = pin(&[High, Low, High, Low, High, Low]);
        let mut led = StatusLed::new(pin);
        led.set_state(Status::Flashing, ms(0)).unwrap(); // lit
        led.set_state(Status::Flashing, ms(600)).unwrap(); // 600 ms into its cycle: dark
        led.set_state(Status::Flashing, ms(900)).unwrap(); // still dark: no write
        led.set_state(Status::Generating, ms(900)).unwrap(); // restarted: lit
        led.tick(ms(1024)).unwrap(); // 124 ms in: still lit
        led.tick(ms(1025)).unwrap(); // 125 ms in: dark
        led.set_state(Status::Ready, ms(1030)).unwrap(); // lit
        led.tick(ms(60_000)).unwrap(); // steady
        led.off().unwrap(); // dark
        led.tick(ms(60_500)).unwrap(); // off shows nothing more
        assert_eq!(led.status(), None);
        check.done();
    }

    #[test]
    fn pin_errors_surface_and_the_write_is_retried() {
        let failure = MockError::Io(ErrorKind::PermissionDenied);
        let pin = Mock::new(&[
            Transaction::set(State::High).with_error(failure.clone()),
            Transaction::set(State::High),
            Transaction::set(State::Low).with_error(failure.clone()),
        ]);
        let mut check = pin.clone();
        let mut led = StatusLed::new(pin);
        assert_eq!(led.set_state(Status::Ready, ms(0)), Err(failure.clone()));
        led.tick(ms(10)).unwrap();
        led.tick(ms(20)).unwrap(); // written: no second write
        assert_eq!(led.off(), Err(failure));
        check.done();
    }
}
