#!/usr/bin/env bash
# Builds and runs the chat's fuzz targets, one at a time, each for a bounded
# time. Not run in CI: see docs/fuzzing.md.
#
#   fuzz/run.sh                     every target, 600 seconds each
#   fuzz/run.sh 120                 every target, 120 seconds each
#   fuzz/run.sh tui_sanitize 1800   one target, 1800 seconds
#
# Corpora grow in fuzz/corpus/<target>/ (seeded from fuzz/seeds/<target>/),
# crashes land in fuzz/artifacts/<target>/, libFuzzer's log of each run in
# fuzz/logs/<target>.log. Exits 1 when any target found a crash, a timeout
# or a leak, 2 on a usage or build error.
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). One job, one worker: the machines it runs on are shared.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
all_targets=(decode_client normalize_text tui_sanitize server_frame)
seconds=600
targets=()

for arg in "$@"; do
    if [[ "$arg" =~ ^[0-9]+$ ]]; then
        seconds="$arg"
    elif [[ " ${all_targets[*]} " == *" $arg "* ]]; then
        targets+=("$arg")
    else
        echo "usage: $0 [TARGET] [SECONDS]; targets: ${all_targets[*]}" >&2
        exit 2
    fi
done
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${all_targets[@]}")
fi

# The JSON targets start from the request tokens of docs/protocol.md.
dict_for() {
    case "$1" in
        decode_client | server_frame) echo "-dict=$fuzz_dir/dicts/json.dict" ;;
    esac
}

cd "$fuzz_dir"
mkdir -p logs
# One build for all the targets asked for (they share every dependency).
build=()
if [[ ${#targets[@]} -eq 1 ]]; then
    build=("${targets[0]}")
fi
echo "== building ${build[*]:-every target} (log: fuzz/logs/build.log)"
if ! cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" "${build[@]}" >logs/build.log 2>&1; then
    tail -n 40 logs/build.log >&2
    echo "build failed" >&2
    exit 2
fi

failed=()
for target in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$target"
    echo "== $target: ${seconds}s, corpus $corpus"
    # With -jobs, libFuzzer runs the fuzzing in a child process whose output
    # goes to fuzz-0.log in the current directory: run it in logs/.
    rm -f logs/fuzz-0.log
    status=0
    (cd logs && cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" \
        "$corpus" "$fuzz_dir/seeds/$target" -- \
        -max_total_time="$seconds" -jobs=1 -workers=1 \
        -max_len=8192 -timeout=10 -print_final_stats=1 \
        $(dict_for "$target")) || status=$?
    mv -f logs/fuzz-0.log "logs/$target.log" 2>/dev/null || true
    # The final stats, and a crash's report when there was one.
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::|Done|==[0-9]+==|SUMMARY|Test unit written|thread .* panicked)' \
        "logs/$target.log" 2>/dev/null | tail -n 20 || true
    if [[ $status -ne 0 ]]; then
        echo "!! $target failed (exit $status): see logs/$target.log and artifacts/$target/"
        failed+=("$target")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
echo "no crash in: ${targets[*]}"
