#!/usr/bin/env bash
# Run a command several times in a row while one CPU core is kept busy, to reproduce
# timing-sensitive test failures on a loaded machine (and to show a fix holds there).
#
#   scripts/busy_test.sh [-n RUNS] [-c CPU] [-b BURNERS] [--] [COMMAND...]
#
#   -n RUNS     how many times to run COMMAND (default 3)
#   -c CPU      pin the burner(s) to this core with taskset (default: not pinned)
#   -b BURNERS  how many burning processes (default 1: one core's worth)
#   COMMAND     what to run (default: make test)
#
# Prints, per run: pass/fail, duration and the pytest summary line (the last line of the
# output that looks like "N passed ..."); the full output of each run goes to a log file
# in $BUSY_LOG_DIR (default: a fresh temporary directory). The burners are killed on exit,
# however the script ends. Exits 1 if any run failed, 2 on a bad command line.
set -u

runs=3
cpu=""
burners=1
usage() { sed -n '4,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) [ $# -ge 2 ] || usage; runs="$2"; shift 2 ;;
    -c) [ $# -ge 2 ] || usage; cpu="$2"; shift 2 ;;
    -b) [ $# -ge 2 ] || usage; burners="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
  esac
done
case "$runs$burners" in *[!0-9]*|"") usage ;; esac
[ $# -gt 0 ] || set -- make test

logdir="${BUSY_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/busy_test.XXXXXX")}"
mkdir -p "$logdir"

pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null
  done
  pids=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

burn=(python3 -c 'while True: pass')
for _ in $(seq 1 "$burners"); do
  if [ -n "$cpu" ] && command -v taskset >/dev/null 2>&1; then
    taskset -c "$cpu" "${burn[@]}" &
  else
    "${burn[@]}" &
  fi
  pids+=("$!")
done
echo "burning ${burners} core(s) (pids ${pids[*]}${cpu:+, on cpu $cpu}); logs in $logdir"
echo "command: $*"

failed=0
for i in $(seq 1 "$runs"); do
  log="$logdir/run$i.log"
  start=$(date +%s.%N)
  "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  dur=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  summary=$(grep -E '[0-9]+ (passed|failed|error|errors|skipped)' "$log" | tail -n 1)
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ "$rc" -eq 0 ]; then
    verdict=PASS
  else
    verdict="FAIL(rc=$rc)"
    failed=$((failed + 1))
  fi
  printf 'run %d/%d: %s %ss load %s | %s\n' "$i" "$runs" "$verdict" "$dur" "$load" \
    "${summary:-(no pytest summary)}"
done
echo "$failed of $runs run(s) failed"
[ "$failed" -eq 0 ]
