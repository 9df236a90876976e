//! The cancel button: one event per press, debounced.

use core::fmt;
use core::time::Duration;
use embedded_hal::digital::InputPin;

/// A cancel (or push-to-talk) button on an input pin, debounced: a press cancels the reply as
/// Ctrl-C does.
///
/// It has no clock of its own: its caller reads it with [`CancelButton::poll`], passing the time
/// (`now`, since any fixed instant), every [`crate::POLL_INTERVAL`] or so. A change of the
/// button's level counts once the pin has read the new level at every poll for the debounce
/// window, from the first poll that read it; a poll that reads the old level again drops the
/// change. So contact bounce shorter than the window is ignored, on pressing and on releasing.
/// The button starts released.
pub struct CancelButton<P> {
    pin: P,
    active_low: bool,
    debounce: Duration,
    /// The debounced level.
    pressed: bool,
    /// When the pin began to read the other level, while it does.
    changing_since: Option<Duration>,
}

/// Shows the settings and the debounced level, not the pin (which need not be `Debug`).
impl<P> fmt::Debug for CancelButton<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelButton")
            .field("active_low", &self.active_low)
            .field("debounce", &self.debounce)
            .field("pressed", &self.pressed)
            .field("changing_since", &self.changing_since)
            .finish_non_exhaustive()
    }
}

impl<P: InputPin> CancelButton<P> {
    /// A button on `pin` that reads low while pressed if `active_low` (a button to ground with a
    /// pull-up), else high; a press or release counts once steady for `debounce`.
    pub fn new(pin: P, active_low: bool, debounce: Duration) -> Self {
        CancelButton {
            pin,
            active_low,
            debounce,
            pressed: false,
            changing_since: None,
        }
    }

    /// Reads the pin at `now`: `true` once per press, when it has lasted the debounce window;
    /// `false` otherwise, however long the button is held.
    pub fn poll(&mut self, now: Duration) -> Result<bool, P::Error> {
        let reads_pressed = if self.active_low {
            self.pin.is_low()?
        } else {
            self.pin.is_high()?
        };
        if reads_pressed == self.pressed {
            self.changing_since = None;
            return Ok(false);
        }
        let since = *self.changing_since.get_or_insert(now);
        if now.saturating_sub(since) < self.debounce {
            return Ok(false);
        }
        self.pressed = reads_pressed;
        self.changing_since = None;
        Ok(reads_pressed)
    }

    /// Whether the button is pressed, debounced, as of the last [`CancelButton::poll`] (for
    /// push-to-talk: held since the press that `poll` reported).
    pub fn is_pressed(&self) -> bool {
        self.pressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::MockError;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};
    use std::io::ErrorKind;

    const WINDOW: Duration = Duration::from_millis(30);

    /// Polls a button that reads `pressed` at the given milliseconds; the times of the presses
    /// reported.
    fn presses(active_low: bool, readings: &[(u64, bool)]) -> Vec<u64> {
        let level = |pressed: bool| {
            if pressed == active_low {
                State::Low
            } else {
                State::High
            }
        };
        let expected: Vec<_> = readings
            .iter()
            .map(|&(_, pressed)| Transaction::get(level(pressed)))
            .collect();
        let mut check = Mock::new(&expected);
        let mut button = CancelButton::new(check.clone(), active_low, WINDOW);
        let presses = readings
            .iter()
            .filter(|&&(t, _)| button.poll(Duration::from_millis(t)).unwrap())
            .map(|&(t, _)| t)
            .collect();
        check.done();
        presses
    }

    /// Readings every 10 ms from `from` (inclusive) to `to` (exclusive).
    fn steady(from: u64, to: u64, pressed: bool) -> Vec<(u64, bool)> {
        (from..to).step_by(10).map(|t| (t, pressed)).collect()
    }

    #[test]
    fn a_press_counts_once_steady_for_the_window() {
        let readings = [steady(0, 50, false), steady(50, 200, true)].concat();
        assert_eq!(presses(true, &readings), [80]);
    }

    #[test]
    fn bounces_shorter_than_the_window_are_ignored() {
        let mut readings = steady(0, 20, false);
        // Contact bounce: pressed for 20 ms, released, pressed for 10 ms, released.
        readings.extend([(20, true), (30, true), (40, false), (50, true), (60, false)]);
        readings.extend(steady(70, 200, false));
        assert_eq!(presses(true, &readings), []);
    }

    #[test]
    fn a_bouncing_press_counts_from_when_it_settles() {
        let mut readings = vec![(0, false), (5, true), (10, false), (15, true), (20, false)];
        readings.extend(steady(25, 100, true));
        assert_eq!(presses(true, &readings), [55]);
    }

    #[test]
    fn a_held_button_does_not_repeat_and_bounce_while_held_is_not_a_new_press() {
        let mut readings = steady(0, 1000, true);
        readings.extend([(1000, false), (1010, false), (1020, true)]); // a 20 ms release
        readings.extend(steady(1030, 3000, true));
        assert_eq!(presses(true, &readings), [30]);
    }

    #[test]
    fn each_press_after_a_release_counts_once() {
        let readings = [
            steady(0, 100, true),
            steady(100, 200, false),
            steady(200, 300, true),
            steady(300, 400, false),
            steady(400, 500, true),
        ]
        .concat();
        assert_eq!(presses(true, &readings), [30, 230, 430]);
    }

    #[test]
    fn active_high_buttons_press_on_high() {
        let readings = [steady(0, 100, false), steady(100, 200, true)].concat();
        assert_eq!(presses(false, &readings), [130]);
        // The same levels read by an active-low button: pressed from the start, released later.
        let low_is_pressed = |levels: &[(u64, bool)]| {
            levels
                .iter()
                .map(|&(t, high)| (t, !high))
                .collect::<Vec<_>>()
        };
        assert_eq!(presses(true, &low_is_pressed(&readings)), [30]);
    }

    #[test]
    fn is_pressed_follows_the_debounced_level() {
        let mut check = Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::High),
        ]);
        let mut button = CancelButton::new(check.clone(), true, WINDOW);
        let at = |ms| Duration::from_millis(ms);
        assert!(!button.poll(at(0)).unwrap() && !button.is_pressed());
        assert!(button.poll(at(40)).unwrap() && button.is_pressed());
        assert!(!button.poll(at(100)).unwrap() && button.is_pressed());
        assert!(!button.poll(at(130)).unwrap() && !button.is_pressed());
        check.done();
    }

    #[test]
    fn pin_errors_surface_and_leave_the_window_running() {
        let failure = MockError::Io(ErrorKind::Other);
        let mut check = Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::Low).with_error(failure.clone()),
            Transaction::get(State::Low),
        ]);
        let mut button = CancelButton::new(check.clone(), true, WINDOW);
        assert_eq!(button.poll(Duration::from_millis(0)), Ok(false));
        assert_eq!(button.poll(Duration::from_millis(10)), Err(failure));
        assert_eq!(button.poll(Duration::from_millis(30)), Ok(true));
        check.done();
    }

    #[test]
    fn a_zero_window_counts_a_press_at_the_first_poll_that_reads_it() {
        let mut check = Mock::new(&[Transaction::get(State::High), Transaction::get(State::High)]);
        let mut button = CancelButton::new(check.clone(), false, Duration::ZERO);
        assert_eq!(button.poll(Duration::from_millis(7)), Ok(true));
        assert_eq!(button.poll(Duration::from_millis(8)), Ok(false));
        check.done();
    }
}
