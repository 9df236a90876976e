//! The board's lines on Linux: the GPIO character device, through linux-embedded-hal.

use crate::{CancelButton, Panel, StatusLed};
use ember_board::BoardSignals;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
pub use linux_embedded_hal::{CdevPin, CdevPinError, Delay};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The consumer the lines are requested as (`gpioinfo` shows it).
pub const CONSUMER: &str = "ember";

/// Which of the board's signals a line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The status LED (`status_led`).
    StatusLed,
    /// The cancel button (`cancel_button`).
    CancelButton,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::StatusLed => "the status LED",
            Signal::CancelButton => "the cancel button",
        })
    }
}

/// A GPIO chip or line that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    /// The chip's device cannot be opened or is not a GPIO chip.
    #[error("cannot open GPIO chip {}: {source}", chip.display())]
    Chip {
        /// The chip's device.
        chip: PathBuf,
        /// Why.
        source: CdevPinError,
    },
    /// A line is not on the chip or cannot be requested (in use, say).
    #[error("cannot open GPIO line {line} of {} for {signal}: {source}", chip.display())]
    Line {
        /// The chip's device.
        chip: PathBuf,
        /// The line's offset on the chip.
        line: u32,
        /// What the line is for.
        signal: Signal,
        /// Why.
        source: CdevPinError,
    },
}

/// A board's signals, opened by [`open_signals`]: the status LED (off, showing nothing until
/// its first update) and the cancel button, each `None` without its line.
pub type Signals = Panel<CdevPin, CdevPin>;

/// Opens the lines a profile's `[signals]` names: the LED's as an output, off, and the button's
/// as an input. A signal without a line is `None`; with neither, the chip is not opened.
///
/// The lines are requested without bias: an active-low button needs a pull-up from the board
/// (on a Raspberry Pi, `gpio=N=ip,pu` in `config.txt`) or a resistor.
pub fn open_signals(signals: &BoardSignals) -> Result<Signals, SignalsError> {
    if signals.status_led.is_none() && signals.cancel_button.is_none() {
        return Ok(Signals::new(None, None));
    }
    let mut chip = Chip::new(&signals.gpio_chip).map_err(|e| SignalsError::Chip {
        chip: signals.gpio_chip.clone(),
        source: e.into(),
    })?;
    let mut open = |line: u32, signal: Signal, flags: LineRequestFlags| {
        chip.get_line(line)
            .and_then(|l| l.request(flags, 0, CONSUMER))
            .and_then(CdevPin::new)
            .map_err(|e| SignalsError::Line {
                chip: signals.gpio_chip.clone(),
                line,
                signal,
                source: e.into(),
            })
    };
    let led = signals
        .status_led
        .map(|line| open(line, Signal::StatusLed, LineRequestFlags::OUTPUT))
        .transpose()?
        .map(StatusLed::new);
    let button = signals
        .cancel_button
        .map(|line| open(line, Signal::CancelButton, LineRequestFlags::INPUT))
        .transpose()?
        .map(|pin| {
            let debounce = Duration::from_millis(signals.debounce_ms.into());
            CancelButton::new(pin, signals.button_active_low, debounce)
        });
    Ok(Signals::new(led, button))
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_embedded_hal::gpio_cdev;

    fn signals(gpio_chip: &str) -> BoardSignals {
        BoardSignals {
            gpio_chip: PathBuf::from(gpio_chip),
            status_led: Some(17),
            cancel_button: Some(27),
            button_active_low: true,
            debounce_ms: 30,
        }
    }

    #[test]
    fn without_lines_nothing_is_opened() {
        let none = BoardSignals {
            status_led: None,
            cancel_button: None,
            ..signals("/dev/no-such-gpiochip")
        };
        let opened = open_signals(&none).unwrap();
        assert!(opened.led.is_none() && opened.button.is_none());
    }

    #[test]
    fn a_missing_chip_is_named() {
        let error = open_signals(&signals("/dev/no-such-gpiochip")).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, SignalsError::Chip { .. }), "{text}");
        assert!(
            text.starts_with("cannot open GPIO chip /dev/no-such-gpiochip: No such file"),
            "{text}"
        );
    }

    #[test]
    fn a_device_that_is_not_a_gpio_chip_is_refused() {
        let error = open_signals(&signals("/dev/null")).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, SignalsError::Chip { .. }), "{text}");
        assert!(
            text.starts_with("cannot open GPIO chip /dev/null: "),
            "{text}"
        );
    }

    #[test]
    fn line_errors_name_the_chip_the_line_and_the_signal() {
        let busy = std::io::Error::from_raw_os_error(16);
        let error = SignalsError::Line {
            chip: PathBuf::from("/dev/gpiochip0"),
            line: 17,
            signal: Signal::StatusLed,
            source: gpio_cdev::errors::Error::from(busy).into(),
        };
        assert_eq!(
            error.to_string(),
            "cannot open GPIO line 17 of /dev/gpiochip0 for the status LED: Device or resource \
             busy (os error 16)"
        );
    }
}
