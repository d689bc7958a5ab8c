#!/usr/bin/env bash
# Builds hvm's fuzz targets with libFuzzer's coverage instrumentation (the
# flags cargo-fuzz passes, minus AddressSanitizer, which needs nightly) on
# the stable toolchain, then runs each for SECONDS (default 20).
#   fuzz/run.sh [SECONDS] [TARGET...]      (all targets when none is named)
# Corpora grow in fuzz/corpus/TARGET; a crash or hang is saved as
# fuzz/artifacts/TARGET/{crash,timeout}-* and makes this script fail. Inputs
# in fuzz/regressions/TARGET (each once found a bug) run first.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation away from build scripts and proc macros.
cargo build --release --target "$triple" --bins
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # Inputs that once crashed or hung a target run first, once each.
    if [ -d "regressions/$t" ] && ! "target/$triple/release/$t" -timeout=10 regressions/"$t"/* \
        2>"artifacts/$t/regressions.txt"; then
        failed+=("$t (a regression input)")
        tail -20 "artifacts/$t/regressions.txt"
        continue
    fi
    # Real inputs to start from (read only; new finds go to corpus/).
    case $t in
        kernel) seeds=(../guest-images/tiny) ;;
        spec) seeds=(../examples) ;;
        *) seeds=() ;;
    esac
    echo "fuzz: $t for ${seconds}s"
    # -timeout: an input that runs for 10 s is a hang, and a failure.
    if ! "target/$triple/release/$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" "${seeds[@]}" 2>"artifacts/$t/log.txt"; then
        failed+=("$t")
        tail -40 "artifacts/$t/log.txt"
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "artifacts/$t/log.txt" | tr '\n' ' ' | sed "s/^/fuzz: $t: /"; echo
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: ok"
