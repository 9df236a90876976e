#!/usr/bin/env bash
# Installs what cross builds and emulated tests need on a Debian/Ubuntu machine: the Rust
# targets, Debian's cross C toolchains (tract-linalg compiles C and assembly for the target) and
# qemu-user, which `.cargo/config.toml` uses as the runner.
set -euo pipefail

rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf thumbv7em-none-eabihf

packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user-static)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q "${missing[@]}"
fi
aarch64-linux-gnu-gcc --version | head -1
arm-linux-gnueabihf-gcc --version | head -1
qemu-aarch64-static --version | head -1
