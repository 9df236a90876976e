//! The LED and the button together, as a driver uses them.

use crate::{CancelButton, Status, StatusLed};
use core::fmt::Debug;
use core::time::Duration;
use embedded_hal::digital::{InputPin, OutputPin};

/// A board's status LED and cancel button, either or both absent.
pub struct Panel<L, B> {
    /// The status LED, if the board has one.
    pub led: Option<StatusLed<L>>,
    /// The cancel button, if the board has one.
    pub button: Option<CancelButton<B>>,
    /// A pin failed at the last update (reported once until one works again).
    failing: bool,
}

impl<L, B> Debug for Panel<L, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Panel")
            .field("led", &self.led)
            .field("button", &self.button)
            .finish_non_exhaustive()
    }
}

impl<L: OutputPin, B: InputPin> Panel<L, B> {
    /// A panel of these signals.
    pub fn new(led: Option<StatusLed<L>>, button: Option<CancelButton<B>>) -> Self {
        Panel {
            led,
            button,
            failing: false,
        }
    }

    /// Shows `status` (or what the device is doing) on the LED and says whether the button was pressed since the last call.
    /// A pin that fails is logged (once, until it works again) and tried again next time: the
    /// chat goes on without its signals.
    pub fn update(&mut self, status: impl Into<Status>, now: Duration) -> bool {
        let status = status.into();
        let shown = self.led.as_mut().map(|led| led.set_state(status, now));
        let pressed = self.button.as_mut().map(|button| button.poll(now));
        let failed = report(&shown) | report(&pressed);
        if failed && !self.failing {
            log::warn!("a board signal failed: {shown:?} {pressed:?}");
        }
        self.failing = failed;
        matches!(pressed, Some(Ok(true)))
    }
}

fn report<T, E: Debug>(result: &Option<Result<T, E>>) -> bool {
    matches!(result, Some(Err(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    #[test]
    fn the_led_shows_the_status_and_a_press_is_reported_once() {
        let led = Mock::new(&[Transaction::set(State::High)]);
        let mut led_check = led.clone();
        let low = |n| (0..n).map(|_| Transaction::get(State::Low));
        let high = |n| (0..n).map(|_| Transaction::get(State::High));
        let reads: Vec<Transaction> = high(2).chain(low(4)).chain(high(1)).collect();
        let button = Mock::new(&reads);
        let mut button_check = button.clone();
        let mut panel = Panel::new(
            Some(StatusLed::new(led)),
            Some(CancelButton::new(button, true, Duration::from_millis(20))),
        );
        let pressed: Vec<bool> = (0..7)
            .map(|i| panel.update(Status::Ready, Duration::from_millis(10 * i)))
            .collect();
        assert_eq!(pressed.iter().filter(|p| **p).count(), 1, "{pressed:?}");
        drop(panel);
        led_check.done();
        button_check.done();
    }
}
