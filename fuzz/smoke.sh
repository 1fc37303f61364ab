#!/usr/bin/env sh
# Short fuzz smoke run of every target (default 30 s each). Fails on the first crash.
set -eu
secs="${1:-30}"
cd "$(dirname "$0")"
for t in decode_frame decode_announcement decode_envelope verify_resigned; do
    mkdir -p "corpus/$t"
    RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir ../target/fuzz "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048
done
