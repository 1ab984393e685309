#!/usr/bin/env bash
# linger slow-client benchmark: how linger, nginx and haproxy (1 worker/thread
# each, access logs off) in front of one nginx origin cope with slow clients.
#   Phase 1, slow readers: wrk latency on /small before and while
#     `slowhttptest -X` reads a 1 MiB response slowly over 1000 connections;
#     proxy CPU during the attack; for linger a 5 s `strace -c` summary.
#   Phase 2, slow bodies: `slowhttptest -B` trickles 1000 POST bodies; how
#     many origin connections the proxy holds (ss, every second for 20 s), and
#     wrk p99 on /small meanwhile. Adds the target linger-nobuf
#     (request_buffer_bytes = 0).
# See bench/README.md, section "Slow clients (bench/slow.sh)".
#
# Usage: bench/slow.sh [options]
#   --targets LIST     subset of linger,linger-nobuf,nginx,haproxy (default: all;
#                      linger-nobuf only runs in phase 2)
#   --phases LIST      1, 2 or 1,2 (default 1,2)
#   --conns N          slowhttptest connections (default 1000)
#   --duration D       wrk duration, e.g. 10s (default 10s)
#   --body-path PATH   origin path the slow POSTs go to (default /post: the origin
#                      reads the whole body before answering, like an application;
#                      /small answers as soon as the head arrives and discards the body)
#   --json FILE        where to write the JSON report (default bench/results/slow-latest.json)
#   --no-install       do not apt-get install missing tools
#   --keep-tmp         keep the temporary directory (configs, logs, raw outputs)
#   -h, --help         this help
# Environment:
#   LINGER_BIN         linger binary (default target/release/linger; this script
#                      never builds: run `cargo build --release -p linger` first)
#   WARMUP             wrk warm-up per freshly started target (default 2s, 0 = none)
#   SX_NICE            nice level for slowhttptest and the ss sampler (default 19,
#                      0 = none): slowhttptest 1.8.2 spins, using a whole core
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
LIB="$BENCH_DIR/lib"
PY=${PYTHON:-python3}
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in bench/lib

TARGETS="linger,linger-nobuf,nginx,haproxy"
PHASES="1,2"
SX_CONNS=1000
DURATION=10s
BODY_PATH=/post
JSON_OUT="$BENCH_DIR/results/slow-latest.json"
INSTALL=1
KEEP_TMP=0
WARMUP=${WARMUP:-2s}
SX_NICE=${SX_NICE:-19}
# Fixed parts of the load (see the README before changing them).
WRK_THREADS=1
WRK_CONNS=4
RAMP_S=10       # phase 1: seconds between starting slowhttptest and starting wrk ...
RAMP_MAX_S=20   # ... or more, up to this, until the proxy holds all slow connections
STRACE_S=5      # phase 1, linger: strace -c window after the wrk run
SAMPLE_S=20     # phase 2: seconds of origin connection counting
P2_WRK_AT=8     # phase 2: wrk starts this many seconds into the attack

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "slow.sh: $*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --targets) TARGETS=${2:?}; shift 2 ;;
        --targets=*) TARGETS=${1#*=}; shift ;;
        --phases) PHASES=${2:?}; shift 2 ;;
        --phases=*) PHASES=${1#*=}; shift ;;
        --conns) SX_CONNS=${2:?}; shift 2 ;;
        --conns=*) SX_CONNS=${1#*=}; shift ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --duration=*) DURATION=${1#*=}; shift ;;
        --body-path) BODY_PATH=${2:?}; shift 2 ;;
        --body-path=*) BODY_PATH=${1#*=}; shift ;;
        --json) JSON_OUT=${2:?}; shift 2 ;;
        --json=*) JSON_OUT=${1#*=}; shift ;;
        --no-install) INSTALL=0; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

[[ $SX_CONNS =~ ^[1-9][0-9]*$ ]] || die "--conns must be a positive integer"
[[ $SX_NICE =~ ^[0-9]+$ ]] && ((SX_NICE <= 19)) || die "SX_NICE must be 0 to 19"
NICE=()
((SX_NICE)) && NICE=(nice -n "$SX_NICE")
[[ $DURATION =~ ^[1-9][0-9]*s$ ]] || die "--duration must be whole seconds, like 10s"
DUR_S=${DURATION%s}
case "$BODY_PATH" in /post|/small) ;; *) die "--body-path must be /post or /small" ;; esac
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in linger|linger-nobuf|nginx|haproxy) ;; *) die "unknown target '$t' (linger,linger-nobuf,nginx,haproxy)" ;; esac
done
((${#TARGET_LIST[@]})) || die "no targets"
RUN_P1=0 RUN_P2=0
IFS=, read -r -a PHASE_LIST <<<"$PHASES"
for p in "${PHASE_LIST[@]}"; do
    case "$p" in 1) RUN_P1=1 ;; 2) RUN_P2=1 ;; *) die "unknown phase '$p' (1, 2)" ;; esac
done
((RUN_P1 || RUN_P2)) || die "no phases"
[[ $JSON_OUT = /* ]] || JSON_OUT="$PWD/$JSON_OUT"

P1_TARGETS=() P2_TARGETS=()
for t in "${TARGET_LIST[@]}"; do
    [[ $t != linger-nobuf ]] && P1_TARGETS+=("$t")
    P2_TARGETS+=("$t")
done
((RUN_P1)) || P1_TARGETS=()
((RUN_P2)) || P2_TARGETS=()
has() { local x; for x in "${@:2}"; do [[ $x == "$1" ]] && return 0; done; return 1; }
NEED_LINGER=0
for t in "${P1_TARGETS[@]}" "${P2_TARGETS[@]}"; do [[ $t == linger* ]] && NEED_LINGER=1; done
NEED_STRACE=0
has linger "${P1_TARGETS[@]}" && NEED_STRACE=1

# ---------------------------------------------------------------- tools ----
export PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=lib/tools.sh
source "$LIB/tools.sh"
extra_tools=(slowhttptest:slowhttptest ss:iproute2 curl:curl)
((NEED_STRACE)) && extra_tools+=(strace:strace)
install_tools "${extra_tools[@]}"
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

if ((NEED_LINGER)); then
    LINGER_BIN=${LINGER_BIN:-$REPO_DIR/target/release/linger}
    [[ -x $LINGER_BIN ]] || die "linger binary $LINGER_BIN is missing or not executable; build it (cargo build --release -p linger) or set LINGER_BIN"
    LINGER_BIN=$(cd "$(dirname "$LINGER_BIN")" && pwd)/$(basename "$LINGER_BIN")
fi

# ------------------------------------------------------ process control ----
WORK=$(mktemp -d "${TMPDIR:-/tmp}/linger-slow.XXXXXX")
SCRIPT=slow.sh
# shellcheck source=lib/proc.sh
source "$LIB/proc.sh"
((CONN_LIMIT >= 3000)) || echo "warning: fd limit $NOFILE is low for $SX_CONNS slow connections per proxy" >&2

# meta FILE KEY VALUE: set KEY in the JSON object in FILE (VALUE parsed as JSON if it is JSON)
meta() { "$PY" "$LIB/slow_report.py" set "$@"; }
now() { date +%s.%N; }

# ---------------------------------------------------------------- origin ---

launch_origin "$WORK/origin" # /small, /1m and /post are the ones used here

# http_check URL [POST_BYTES] -> prints "STATUS BYTES"
http_check() {
    local url=$1 body=${2:-} out
    if [[ -n $body ]]; then
        out=$(head -c "$body" /dev/zero | tr '\0' 'a' |
            curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 10 -X POST \
                -H 'Content-Type: application/x-www-form-urlencoded' --data-binary @- "$url" 2>/dev/null) || true
    else
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 10 "$url" 2>/dev/null) || true
    fi
    echo "${out:-000 0}"
}

read -r st _ < <(http_check "http://127.0.0.1:$ORIGIN_PORT$BODY_PATH" 8192)
[[ $st == 200 ]] || die "origin: POST $BODY_PATH with an 8192-byte body got HTTP $st, not 200"
read -r st sz < <(http_check "http://127.0.0.1:$ORIGIN_PORT/1m")
[[ $st == 200 && $sz == 1048576 ]] || die "origin: GET /1m got HTTP $st with $sz bytes"

# ---------------------------------------------------------------- proxies --
TPID="" TPORT="" TDIR=""

start_nginx_proxy() { # run-dir
    local dir=$1 port
    port=$(free_port)
    launch_nginx_proxy "$dir" "$port" 1 || return 1
    TPID=$LAUNCHED_PID TPORT=$port
}

start_haproxy() { # run-dir
    local dir=$1 port
    port=$(free_port)
    # A slow reader keeps a response, and so the server side, busy for minutes.
    launch_haproxy "$dir" "$port" 1 300s || return 1
    TPID=$LAUNCHED_PID TPORT=$port
}

start_linger() { # run-dir nobuf(0|1)
    local dir=$1 nobuf=$2 port route_extra=""
    port=$(free_port)
    mkdir -p "$dir"
    ((nobuf)) && route_extra="request_buffer_bytes = 0"
    cat >"$dir/linger.toml" <<EOF
[admin]
enabled = false

[runtime]
workers = 1
access_log = "off"

[[listener]]
address = "127.0.0.1:$port"
idle_timeout = "300s"

[[route]]
cluster = "origin"
$route_extra

[[cluster]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN_PORT"]
EOF
    local cmd=("$LINGER_BIN" serve --config "$dir/linger.toml")
    echo "${cmd[*]}" >"$dir/cmdline"
    "${cmd[@]}" >"$dir/linger.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    wait_ready "$(basename "$dir")" "$pid" "$port" "$dir/linger.log" || return 1
    TPID=$pid TPORT=$port
}

start_target() { # target run-dir
    TPID="" TPORT="" TDIR=$2
    case "$1" in
        nginx) start_nginx_proxy "$2" ;;
        haproxy) start_haproxy "$2" ;;
        linger) start_linger "$2" 0 ;;
        linger-nobuf) start_linger "$2" 1 ;;
    esac
}

stop_target() {
    [[ -n $TPID ]] && stop_tree "$TPID"
    TPID="" TPORT=""
}

warmup() {
    [[ $WARMUP == 0 ]] && return 0
    wrk "-t$WRK_THREADS" "-c$WRK_CONNS" "-d$WARMUP" "http://127.0.0.1:$1/small" >/dev/null 2>&1 || true
}

# run_wrk TARGET ROUND(1 baseline, 2 under attack) OUT_JSONL DIR [HELPER_PID...] -> measure_wrk.py, timed.
# The CPU of the helper PIDs (slowhttptest, the ss sampler) over the run is recorded too.
run_wrk() {
    local t=$1 round=$2 out=$3 dir=$4 t0 t1 rc=0 c0="" c1
    shift 4
    (($#)) && c0=$("$PY" "$LIB/slow_report.py" cpu "$@")
    t0=$(now)
    "$PY" "$LIB/measure_wrk.py" --target "$t" --threads 1 --round "$round" \
        --url "http://127.0.0.1:$TPORT/small" --duration "$DURATION" \
        --wrk-threads "$WRK_THREADS" --conns "$WRK_CONNS" --pid "$TPID" \
        --origin-pid "$ORIGIN_PID" --out "$out" --raw-dir "$dir/wrk" || rc=$?
    t1=$(now)
    if [[ -n $c0 ]]; then
        c1=$("$PY" "$LIB/slow_report.py" cpu "$@")
        meta "$dir/meta.json" "helpers_cpu_s_r${round}" "$("$PY" -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' "$c0" "$c1")"
    fi
    meta "$dir/meta.json" "wrk_r${round}_start" "$t0"
    meta "$dir/meta.json" "wrk_r${round}_end" "$t1"
    return $rc
}

# start_sx DIR MODE ARGS... -> SX_PID; slowhttptest's CSV goes to DIR/sx.csv
SX_PID=""
start_sx() {
    local dir=$1
    shift
    local cmd=("${NICE[@]}" slowhttptest "$@" -g -o "$dir/sx")
    echo "${cmd[*]}" >"$dir/sx.cmdline"
    meta "$dir/meta.json" slowhttptest_cmd "${cmd[*]}"
    meta "$dir/meta.json" sx_start "$(now)"
    "${cmd[@]}" >"$dir/sx.log" 2>&1 </dev/null &
    SX_PID=$!
    STARTED_PIDS+=("$SX_PID")
}

# SIGINT makes slowhttptest close its connections and write its CSV.
stop_sx() {
    [[ -n $SX_PID ]] || return 0
    local dir=$1
    meta "$dir/meta.json" sx_alive_at_stop "$(alive "$SX_PID" && echo true || echo false)"
    stop_tree "$SX_PID" INT
    meta "$dir/meta.json" sx_stop "$(now)"
    SX_PID=""
}

# After the attack: wait for the proxy's client connections to go, then stop it.
finish_target() { # target phase dir
    local t=$1 ph=$2 dir=$3 res
    if ! alive "$TPID"; then
        problem "$t" "$ph" "process $TPID died during the test (see $dir)"
        meta "$dir/meta.json" died true
        TPID=""
        return 0
    fi
    if res=$("$PY" "$LIB/slow_conns.py" wait-drop "$TPORT" --side sport --max 0 --timeout 30); then :; else
        problem "$t" "$ph" "clients' connections to the proxy did not close within 30 s after slowhttptest stopped: $res"
    fi
    meta "$dir/meta.json" client_drop "$res"
    res=$("$PY" "$LIB/slow_conns.py" wait-drop "$ORIGIN_PORT" --side dport --max 64 --timeout 10) || true
    meta "$dir/meta.json" origin_drop "$res"
    stop_target
}

SX_READ_ARGS=(-X -c "$SX_CONNS" -r 200 -w 512 -y 1024 -n 5 -z 32 -k 3 -p 3 -l 40)
SX_BODY_ARGS=(-B -c "$SX_CONNS" -r 200 -i 10 -s 8192 -l 30)
WRK_CMD="wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION --latency http://127.0.0.1:PORT/small"

# ---------------------------------------------------------------- phase 1 --
# begin_phase N TARGET: starts TARGET for phase N in its own run directory (PHASE_DIR; the
# target's TPID and TPORT are set as by start_target), and notes its pid and port in the
# directory's meta.json. Fails if the target did not start. Not for $(...): the target
# and its variables must stay in this shell.
begin_phase() {
    local n=$1 t=$2
    local dir="$WORK/p$n-$t"
    PHASE_DIR=$dir
    mkdir -p "$dir"
    echo '{}' >"$dir/meta.json"
    if ! start_target "$t" "$dir"; then
        meta "$dir/meta.json" error '"failed to start"'
        return 1
    fi
    meta "$dir/meta.json" pid "$TPID"
    meta "$dir/meta.json" port "$TPORT"
}

phase1() { # target
    local t=$1 dir st sz
    begin_phase 1 "$t" || return 0
    dir=$PHASE_DIR
    echo "== phase 1 (slow readers): $t pid $TPID port $TPORT"
    read -r st sz < <(http_check "http://127.0.0.1:$TPORT/1m")
    meta "$dir/meta.json" check_1m "{\"status\": $st, \"bytes\": $sz}"
    [[ $st == 200 && $sz == 1048576 ]] || problem "$t" phase1 "GET /1m through the proxy got HTTP $st with $sz bytes"
    warmup "$TPORT"
    echo "   baseline: wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION"
    run_wrk "$t" 1 "$dir/baseline.jsonl" "$dir" || problem "$t" phase1 "baseline wrk failed"

    start_sx "$dir" "${SX_READ_ARGS[@]}" -u "http://127.0.0.1:$TPORT/1m"
    local samp_s=$((RAMP_MAX_S + DUR_S + 2)) samp_pid ramp
    [[ $t == linger ]] && samp_s=$((samp_s + STRACE_S + 1))
    "${NICE[@]}" "$PY" "$LIB/slow_conns.py" sample --origin-port "$ORIGIN_PORT" --proxy-port "$TPORT" \
        --seconds "$samp_s" --out "$dir/conns.json" &
    samp_pid=$!
    STARTED_PIDS+=("$samp_pid")
    echo "   slowhttptest -X pid $SX_PID: ${SX_CONNS} slow readers of /1m; wrk starts in ${RAMP_S}s" \
        "(or later, up to ${RAMP_MAX_S}s, until the proxy holds them all)"
    sleep "$RAMP_S"
    ramp=$("$PY" "$LIB/slow_conns.py" wait-rise "$TPORT" --side sport --min "$SX_CONNS" \
        --timeout $((RAMP_MAX_S - RAMP_S))) || true
    meta "$dir/meta.json" ramp "$ramp"
    run_wrk "$t" 2 "$dir/attack.jsonl" "$dir" "$SX_PID" "$samp_pid" || problem "$t" phase1 "wrk under attack failed"

    if [[ $t == linger ]] && alive "$TPID"; then
        echo "   strace -c -f -p $TPID for ${STRACE_S}s"
        local sp
        strace -c -f -p "$TPID" -o "$dir/strace.txt" 2>"$dir/strace.log" &
        sp=$!
        STARTED_PIDS+=("$sp")
        sleep "$STRACE_S"
        stop_tree "$sp" INT
        meta "$dir/meta.json" strace_cmd "strace -c -f -p $TPID -o $dir/strace.txt (${STRACE_S} s, then SIGINT)"
        [[ -s $dir/strace.txt ]] || problem "$t" phase1 "strace wrote no summary (see $dir/strace.log)"
    fi
    stop_tree "$samp_pid" TERM
    stop_sx "$dir"
    finish_target "$t" phase1 "$dir"
}

# ---------------------------------------------------------------- phase 2 --
phase2() { # target
    local t=$1 dir st sz
    begin_phase 2 "$t" || return 0
    dir=$PHASE_DIR
    echo "== phase 2 (slow bodies): $t pid $TPID port $TPORT"
    read -r st sz < <(http_check "http://127.0.0.1:$TPORT$BODY_PATH" 8192)
    meta "$dir/meta.json" check_post "{\"status\": $st, \"bytes\": $sz}"
    [[ $st == 200 ]] || problem "$t" phase2 "POST $BODY_PATH (8192-byte body) through the proxy got HTTP $st"
    warmup "$TPORT"
    local before
    before=$("$PY" "$LIB/slow_conns.py" count "$ORIGIN_PORT" --side dport)
    meta "$dir/meta.json" origin_conns_before "$before"

    start_sx "$dir" "${SX_BODY_ARGS[@]}" -u "http://127.0.0.1:$TPORT$BODY_PATH"
    local samp_pid
    "${NICE[@]}" "$PY" "$LIB/slow_conns.py" sample --origin-port "$ORIGIN_PORT" --proxy-port "$TPORT" \
        --seconds "$SAMPLE_S" --out "$dir/conns.json" &
    samp_pid=$!
    STARTED_PIDS+=("$samp_pid")
    echo "   slowhttptest -B pid $SX_PID: ${SX_CONNS} slow POST $BODY_PATH; counting origin connections for ${SAMPLE_S}s, wrk at ${P2_WRK_AT}s"
    sleep "$P2_WRK_AT"
    run_wrk "$t" 2 "$dir/attack.jsonl" "$dir" "$SX_PID" "$samp_pid" || problem "$t" phase2 "wrk under attack failed"
    # The sampler stops by itself after SAMPLE_S seconds.
    local i
    for ((i = 0; i < 10 * (SAMPLE_S + 5); i++)); do alive "$samp_pid" || break; sleep 0.1; done
    stop_tree "$samp_pid" TERM
    stop_sx "$dir"
    finish_target "$t" phase2 "$dir"
}

# ------------------------------------------------------------------- run ---
T_START=$(now)
echo "== linger slow-client bench: phase 1 targets: ${P1_TARGETS[*]:-none}; phase 2 targets: ${P2_TARGETS[*]:-none}"
echo "   origin nginx pid $ORIGIN_PID on 127.0.0.1:$ORIGIN_PORT; nofile $NOFILE; work dir $WORK"
((NEED_LINGER)) && echo "   linger: $LINGER_BIN"
for t in "${P1_TARGETS[@]}"; do phase1 "$t"; done
for t in "${P2_TARGETS[@]}"; do phase2 "$t"; done
T_END=$(now)

CONFIG_JSON=$("$PY" -c '
import json, sys
a = sys.argv[1:]
print(json.dumps(dict(
    phase1_targets=[x for x in a[0].split(",") if x], phase2_targets=[x for x in a[1].split(",") if x],
    slowhttptest_conns=int(a[2]), wrk_cmd=a[3], wrk_duration=a[4], warmup=a[5],
    slow_read_cmd=a[17] + "slowhttptest " + a[6] + " -g -o DIR/sx -u http://127.0.0.1:PORT/1m",
    slow_body_cmd=a[17] + "slowhttptest " + a[7] + " -g -o DIR/sx -u http://127.0.0.1:PORT" + a[8],
    sx_nice=int(a[18]),
    body_path=a[8], ramp_s=int(a[9]), ramp_max_s=int(a[19]), strace_s=int(a[10]), sample_s=int(a[11]), p2_wrk_at_s=int(a[12]),
    nofile=int(a[13]), conn_limit=int(a[14]), elapsed_s=round(float(a[16]) - float(a[15]), 1),
    origin="nginx, 1 worker, worker_connections 8192, access_log off, keepalive_timeout 300s; "
           "/small: return 200 \"ok\\n\"; /1m: 1 MiB file; /post: reads the whole body (mirror module), then 200 \"ok\\n\"")))
' "$(IFS=,; echo "${P1_TARGETS[*]}")" "$(IFS=,; echo "${P2_TARGETS[*]}")" "$SX_CONNS" "$WRK_CMD" "$DURATION" "$WARMUP" \
    "${SX_READ_ARGS[*]}" "${SX_BODY_ARGS[*]}" "$BODY_PATH" "$RAMP_S" "$STRACE_S" "$SAMPLE_S" "$P2_WRK_AT" \
    "$NOFILE" "$CONN_LIMIT" "$T_START" "$T_END" "${NICE[*]}${NICE:+ }" "$SX_NICE" "$RAMP_MAX_S")

P1_CSV=$(IFS=,; echo "${P1_TARGETS[*]}")
P2_CSV=$(IFS=,; echo "${P2_TARGETS[*]}")
"$PY" "$LIB/slow_report.py" report --work "$WORK" --p1 "$P1_CSV" --p2 "$P2_CSV" \
    --errors "$ERRORS_JSONL" --config "$CONFIG_JSON" --json "$JSON_OUT" --repo "$REPO_DIR" \
    ${LINGER_BIN:+--linger-bin "$LINGER_BIN"}

if [[ -s $ERRORS_JSONL ]]; then
    exit 1
fi
