#!/usr/bin/env bash
# Runs every cargo-fuzz target over its committed seeds (`fuzz/seeds/<target>`) and its local
# corpus (`fuzz/corpus/<target>`, ignored by git), one after another:
#
#   scripts/fuzz.sh 5       each target for 5 s (CI's smoke run)
#   scripts/fuzz.sh 0       each target over its seeds and corpus only, no new inputs
#   scripts/fuzz.sh -runs=10000000      each target for 10 M executions (the README's runs)
#   scripts/fuzz.sh 600 gguf image      only the targets named
#
# Needs nightly and cargo-fuzz (`rustup toolchain install nightly --profile minimal`,
# `cargo install cargo-fuzz --locked`). The targets are built without AddressSanitizer
# (`--sanitizer none`: the code they reach has no `unsafe`, only the file mapping they skip does,
# and ASan halves the rate) but with debug assertions and overflow checks; the three fuzz crates
# share one target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
seconds="${1:-10}"
shift || true

# crate directory, target, largest input (bytes)
targets=(
    "runtime/core frame_decoder 4096"
    "runtime/core line_editor 4096"
    "runtime/core message 2048"
    "runtime/core slot_table 256"
    "runtime/core image_header 8192"
    "runtime/core device 4096"
    "runtime/image image 16384"
    "runtime/gguf gguf 16384"
)

if [ "$seconds" = 0 ]; then
    limit=(-runs=0)
elif [[ "$seconds" == -runs=* ]]; then
    limit=("$seconds")
else
    limit=(-max_total_time="$seconds")
fi
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
selected() { [ $# -eq 1 ] || [[ " ${*:2} " == *" $1 "* ]]; }

# Build first, each crate's targets in one cargo run (in parallel, one link each).
built=" "
for entry in "${targets[@]}"; do
    read -r dir target _ <<<"$entry"
    if selected "$target" "$@" && [[ "$built" != *" $dir "* ]]; then
        (cd "$dir" && cargo +nightly fuzz build --sanitizer none --target-dir "$target_dir")
        built+="$dir "
    fi
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for entry in "${targets[@]}"; do
    read -r dir target max_len <<<"$entry"
    selected "$target" "$@" || continue
    printf -- '--- %s (%s)\n' "$target" "$dir"
    mkdir -p "$dir/fuzz/corpus/$target"
    status=0
    start=$SECONDS
    (cd "$dir" && cargo +nightly fuzz run --sanitizer none --target-dir "$target_dir" \
        "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        "${limit[@]}" -max_len="$max_len" -print_final_stats=1) >"$log" 2>&1 || status=$?
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' \
        "$log" || true
    printf 'wall: %d s; corpus: %d files (+ %d seeds)\n' "$((SECONDS - start))" \
        "$(find "$dir/fuzz/corpus/$target" -type f | wc -l)" \
        "$(find "$dir/fuzz/seeds/$target" -type f | wc -l)"
    if [ "$status" != 0 ]; then
        tail -n 60 "$log"
        echo "$target failed (exit $status); crash inputs are kept in $dir/fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
done
