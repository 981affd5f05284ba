#!/usr/bin/env bash
# Runs qbd's tests and ends with exactly one line "N passed, N failed".
#   scripts/run-tests.sh BUILD_DIR [NAME_FILTER...]
# 1. BUILD_DIR/unit_tests --order-by=rand (doctest), unless QBD_SKIP_UNIT=1: counts its test cases.
# 2. Every tests/integration/test_*.sh (or those whose name contains a NAME_FILTER), each in its own
#    process group with QBD_BIN=BUILD_DIR/bin, killed after QBD_TEST_TIMEOUT seconds (600). A script
#    prints "PASS: <name>" / "FAIL: <name>: <reason>" lines; each counts once, a script that exits
#    non-zero without a FAIL line counts as one failure, a timeout counts as one failure.
#    unit_tests get QBD_UNIT_TIMEOUT seconds (300).
# Exit status 0 only when nothing failed. Logs stay in a /tmp/qbd-run.* directory.
set -uo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 BUILD_DIR [NAME_FILTER...]" >&2
  exit 2
fi
build=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
timeout_s=${QBD_TEST_TIMEOUT:-600}
unit_timeout_s=${QBD_UNIT_TIMEOUT:-300}
logs=$(mktemp -d /tmp/qbd-run.XXXXXX)
total_pass=0
total_fail=0
summary=()

if ! build_abs=$(cd "$build" 2>/dev/null && pwd); then
  echo "FAIL: setup: build directory $build does not exist"
  echo "0 passed, 1 failed"
  exit 1
fi
export QBD_BIN="$build_abs/bin"

# run_limited SECONDS LOG CMD...: runs CMD in its own process group (stdin /dev/null, output to
# LOG), kills the group (TERM, then KILL 10 s later) after SECONDS. Sets rc and timed_out.
cur_pid=""
cur_wd=""
run_limited() {
  local limit=$1 log=$2 marker="$logs/.timeout.$$.$RANDOM"
  shift 2
  set -m
  "$@" </dev/null >"$log" 2>&1 &
  cur_pid=$!
  (
    sleep "$limit"
    touch "$marker"
    stop_group "$cur_pid"
  ) </dev/null >/dev/null 2>&1 &
  cur_wd=$!
  set +m
  wait "$cur_pid"
  rc=$?
  kill -TERM -- "-$cur_wd" 2>/dev/null
  wait "$cur_wd" 2>/dev/null
  # Whatever the script left running in its process group goes now.
  kill -KILL -- "-$cur_pid" 2>/dev/null
  cur_pid=""
  cur_wd=""
  timed_out=0
  [ -e "$marker" ] && timed_out=1
  rm -f "$marker"
}

stop_group() { # PGID: SIGTERM (the test's EXIT trap cleans up), SIGKILL what is left after 10 s
  local tries=100
  kill -TERM -- "-$1" 2>/dev/null || return 0
  while [ $tries -gt 0 ] && kill -0 -- "-$1" 2>/dev/null; do
    sleep 0.1
    tries=$((tries - 1))
  done
  kill -KILL -- "-$1" 2>/dev/null
}

# Ctrl-C or SIGTERM: the running test is in its own process group, so stop it explicitly.
on_signal() {
  trap - INT TERM
  echo
  echo "FAIL: interrupted"
  [ -n "$cur_wd" ] && kill -TERM -- "-$cur_wd" 2>/dev/null
  [ -n "$cur_pid" ] && stop_group "$cur_pid"
  echo "$total_pass passed, $((total_fail + 1)) failed"
  exit 130
}
trap on_signal INT TERM

# --- set-up: the tools the integration tests drive (scripts/install-deps.sh installs them) ----
missing=()
for tool in nbdinfo nbdcopy nbdsh nbdfuse qemu-img qemu-io fio nbdkit fusermount3 mkfs.ext4 \
  e2fsck xxhsum losetup mountpoint python3 setsid timeout qemu-system-x86_64 cpio nbd-client \
  lvm pdata_tools; do
  PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH command -v "$tool" >/dev/null || missing+=("$tool")
done
if ! PATH=/usr/bin:$PATH python3 -c 'import nbd' 2>/dev/null; then missing+=("python3-libnbd"); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "FAIL: setup: missing ${missing[*]} (run scripts/install-deps.sh)"
  total_fail=$((total_fail + 1))
  summary+=("setup: missing tools: ${missing[*]}")
fi

# --- unit tests ---------------------------------------------------------------------------------
if [ "${QBD_SKIP_UNIT:-0}" != 1 ]; then
  echo "== unit_tests"
  ulog="$logs/unit_tests.log"
  if [ ! -x "$build_abs/unit_tests" ]; then
    echo "FAIL: unit_tests: $build/unit_tests does not exist"
    total_fail=$((total_fail + 1))
    summary+=("unit_tests: not built")
  else
    start=$SECONDS
    run_limited "$unit_timeout_s" "$ulog" "$build_abs/unit_tests" --order-by=rand
    line=$(grep -E '^\[doctest\] test cases:' "$ulog" | tail -n 1)
    up=$(sed -nE 's/.*\|[[:space:]]*([0-9]+) passed.*/\1/p' <<<"$line")
    uf=$(sed -nE 's/.*\|[[:space:]]*([0-9]+) failed.*/\1/p' <<<"$line")
    # A test case killed by the timeout shows up in doctest's summary as crashed.
    [ "$timed_out" -eq 1 ] && echo "FAIL: unit_tests: killed after $unit_timeout_s s"
    if [ -z "$up" ] || [ -z "$uf" ]; then
      up=0
      uf=1
      echo "FAIL: unit_tests: no doctest summary line (exit status $rc)"
    elif [ "$rc" -ne 0 ] && [ "$uf" -eq 0 ]; then
      uf=1
      echo "FAIL: unit_tests: exit status $rc although no test case failed"
    fi
    [ -n "$line" ] && echo "$line"
    if [ "$uf" -gt 0 ]; then # doctest's report without the daemon's log lines
      grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z ' "$ulog" | tail -n 200 | sed 's/^/    | /'
    fi
    echo "   unit_tests: $up passed, $uf failed ($((SECONDS - start)) s)"
    total_pass=$((total_pass + up))
    total_fail=$((total_fail + uf))
    summary+=("unit_tests: $up passed, $uf failed")
  fi
fi

# --- integration tests --------------------------------------------------------------------------
scripts=()
for s in "$root"/tests/integration/test_*.sh; do
  [ -e "$s" ] || continue
  if [ $# -gt 0 ]; then
    match=0
    for f in "$@"; do case "$(basename "$s")" in *"$f"*) match=1 ;; esac; done
    [ $match -eq 1 ] || continue
  fi
  scripts+=("$s")
done
if [ $# -gt 0 ] && [ ${#scripts[@]} -eq 0 ]; then
  echo "FAIL: setup: no integration test matches: $*"
  total_fail=$((total_fail + 1))
  summary+=("no integration test matches: $*")
fi

for s in "${scripts[@]}"; do
  name=$(basename "$s" .sh)
  log="$logs/$name.log"
  echo "== $name"
  start=$SECONDS
  run_limited "$timeout_s" "$log" bash "$s"
  p=$(grep -c '^PASS: ' "$log")
  f=$(grep -c '^FAIL: ' "$log")
  extra=""
  if [ "$timed_out" -eq 1 ]; then
    f=$((f + 1))
    extra=" (timed out after $timeout_s s)"
  elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    extra=" (exit status $rc without a FAIL line)"
  fi
  if [ "$f" -gt 0 ]; then
    tail -n 150 "$log" | sed 's/^/    | /'
    echo "   log: $log"
  else
    grep -E '^(PASS|FAIL): ' "$log" | sed 's/^/   /'
  fi
  echo "   $name: $p passed, $f failed$extra ($((SECONDS - start)) s)"
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  summary+=("$name: $p passed, $f failed$extra")
done

echo "== summary (logs in $logs)"
for l in "${summary[@]}"; do echo "   $l"; done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
