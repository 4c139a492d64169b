#!/usr/bin/env bash
# A fuzzing campaign: scripts/fuzz.sh TARGET HOURS (fractions allowed: 0.25), one process at
# nice 19, with cargo-fuzz (`cargo install cargo-fuzz --locked`) on the nightly toolchain
# (FUZZ_TOOLCHAIN=stable: stable with RUSTC_BOOTSTRAP=1), sanitizer FUZZ_SANITIZER (default
# none: the targets are safe Rust; `address` for the unsafe dependencies' sake). The corpus
# grows in fuzz/work/TARGET (git-ignored, seeded from fuzz/corpus/TARGET); crashes land in
# fuzz/artifacts/TARGET; the log, with libFuzzer's final stats, in fuzz/logs/. FUZZ_RUNS=N stops
# after N executions instead of at the time limit (whichever comes first).
#
# scripts/fuzz.sh --seed          regenerates fuzz/seeds/ from hlo/ (fuzz/make_seeds.py) and
#                                 minimizes them into fuzz/corpus/ (cargo fuzz cmin)
# scripts/fuzz.sh --merge TARGET  minimizes fuzz/corpus/TARGET plus fuzz/work/TARGET back into
#                                 fuzz/corpus/TARGET (to commit after a campaign)
# scripts/fuzz.sh --report        the latest campaign of each target as docs/fuzzing.md's table
#                                 rows (from fuzz/logs/)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
source ../scripts/fuzz-targets.sh
toolchain=${FUZZ_TOOLCHAIN:-nightly}
if [[ $toolchain == stable ]]; then export RUSTC_BOOTSTRAP=1; fi
fuzz() { nice -n 19 cargo "+$toolchain" fuzz "$@"; }
san=${FUZZ_SANITIZER:-none}

cmin_into() { # TARGET SOURCE-DIRS...: minimizes the union into fuzz/corpus/TARGET
    local t=$1; shift
    local tmp
    tmp=$(mktemp -d)
    for d in "$@"; do [[ -d $d ]] && cp -n "$d"/* "$tmp"/ 2>/dev/null || true; done
    rm -rf "corpus/$t.new" && mkdir -p "corpus/$t.new"
    # shellcheck disable=SC2046
    fuzz run -s "$san" "$t" "corpus/$t.new" "$tmp" -- -merge=1 $(fuzz_dict "$t") \
        -rss_limit_mb=2048 -timeout=10
    rm -rf "corpus/$t" "$tmp" && mv "corpus/$t.new" "corpus/$t"
    echo "$t: $(ls "corpus/$t" | wc -l) inputs, $(du -sk "corpus/$t" | cut -f1) KiB"
}

case "${1:-}" in
    --seed)
        python3 make_seeds.py
        for t in "${FUZZ_TARGETS[@]}"; do cmin_into "$t" "seeds/$t" "corpus/$t"; done
        exit 0 ;;
    --merge)
        cmin_into "$2" "corpus/$2" "work/$2"
        exit 0 ;;
    --report)
        python3 - <<'PY'
import glob, os, re
rows = {}
for log in sorted(glob.glob("logs/*.log")):
    target = re.sub(r"-\d{8}T\d{6}Z\.log$", "", os.path.basename(log))
    rows[target] = log  # the latest (names sort by time)
for target, log in sorted(rows.items()):
    text = open(log, errors="replace").read()
    stat = lambda k: (re.findall(rf"stat::{k}:\s*(\d+)", text) or ["?"])[-1]
    st = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", text)
    cov, ft, corp, size = st[-1] if st else ("?",) * 4
    done = (re.findall(r"Done \d+ runs in (\d+) second", text) or ["?"])[-1]
    crash = "yes: " + log if re.search(r"ERROR: libFuzzer|panicked", text) else "0"
    runs = stat("number_of_executed_units")
    runs = f"{int(runs):,}" if runs.isdigit() else "running"
    print(f"| {target} | {runs} | {done} s | "
          f"{stat('average_exec_per_sec')} | {cov} | {ft} | {corp} ({size}) | {crash} |")
PY
        exit 0 ;;
    ""|-h|--help)
        sed -n '2,19p' "$0"; echo "targets: ${FUZZ_TARGETS[*]}"; exit 0 ;;
esac
target=$1
hours=${2:?usage: scripts/fuzz.sh TARGET HOURS}
seconds=$(python3 -c "print(max(1, round(float('$hours') * 3600)))")
mkdir -p "work/$target" logs "artifacts/$target"
cp -n "corpus/$target"/* "work/$target"/ 2>/dev/null || true
log="logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
runs=()
if [[ -n ${FUZZ_RUNS:-} ]]; then runs=(-runs="$FUZZ_RUNS"); fi
echo "fuzzing $target for ${seconds}s (sanitizer $san, $toolchain); log $log"
# shellcheck disable=SC2046
fuzz run -s "$san" "$target" "work/$target" -- $(fuzz_dict "$target") \
    -max_total_time="$seconds" "${runs[@]}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | tee "$log" | grep -E '^(#[0-9]+ +(pulse|REDUCE|NEW|DONE))|Done|ERROR|panicked' | tail -n 20
status=${PIPESTATUS[0]}
echo "--- $target: $(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*/[0-9a-zA-Z]*' "$log" | tail -1)"
grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
exit "$status"
