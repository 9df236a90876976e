//! Logging shim: the core logs through `defmt` on bare metal (feature `defmt`) and through `log`
//! on Linux (feature `log`, on with `std`); with neither feature the macros compile to nothing
//! (their arguments are still type-checked). Only integers and `&str` are logged, which both
//! back ends format with `{}`.
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("features `defmt` and `log` are exclusive: pick one log back end");

macro_rules! debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::debug!($($arg)*);
        #[cfg(feature = "log")]
        ::log::debug!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ::core::format_args!($($arg)*);
    }};
}

macro_rules! info {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::info!($($arg)*);
        #[cfg(feature = "log")]
        ::log::info!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ::core::format_args!($($arg)*);
    }};
}

macro_rules! warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        ::defmt::warn!($($arg)*);
        #[cfg(feature = "log")]
        ::log::warn!($($arg)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        let _ = ::core::format_args!($($arg)*);
    }};
}
