#!/usr/bin/env bash
# linger benchmark harness: wrk throughput/latency against linger, nginx and
# haproxy in front of one nginx origin (plus wrk straight to the origin), every
# proxy doing the same work (X-Forwarded-For, a close after 1000 requests per
# client connection, an upstream pool no smaller than the client count), over
# several workloads; and an idle keep-alive connection memory test. See
# bench/README.md.
#
# Usage: bench/run.sh [options]
#   --workloads LIST   subset of small,conns1000,close,resp64k,resp1m,post16k (default: all)
#   --threads LIST     proxy worker/thread counts to test, comma separated (default 1,2)
#   --rounds N         interleaved rounds per workload and thread count (default 3)
#   --duration D       wrk duration per measurement, e.g. 10s (default $DURATION or 10s)
#   --targets LIST     subset of direct,linger,nginx,haproxy (default: all four)
#   --skip-idle        skip the idle keep-alive memory test
#   --only-idle        run only the idle keep-alive memory test
#   --idle-conns N     idle connections per proxy (default 10000)
#   --idle-hold S      seconds to hold the idle connections (default 5)
#   --json FILE        where to write the JSON report (default bench/results/latest.json)
#   --pin              the proxy alone on the last T cpus, the origin and wrk on the others
#                      (taskset): req/s then measures the proxy's own cost per request
#                      without the scheduler's placement of four busy programs on shared
#                      cpus; needs more cpus than the largest T; the `direct` row then has
#                      the origin and wrk sharing their cpus
#   --no-install       do not apt-get install missing tools
#   --keep-tmp         keep the temporary directory (configs, logs, raw wrk output)
#   -h, --help         this help
# Environment:
#   LINGER_BIN         use this linger binary instead of `cargo build --release -p linger`
#   DURATION           default for --duration
#   WRK_THREADS, WRK_CONNS   wrk -t / -c (default 2 / 64; conns1000 always uses -c1000)
#   WARMUP             wrk warm-up per target and workload before its rounds (default 2s, 0 = none)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
LIB="$BENCH_DIR/lib"
PY=${PYTHON:-python3}

ALL_WORKLOADS="small,conns1000,close,resp64k,resp1m,post16k"
WORKLOADS=$ALL_WORKLOADS
THREADS_LIST="1,2"
ROUNDS=3
DURATION=${DURATION:-10s}
TARGETS="direct,linger,nginx,haproxy"
SKIP_IDLE=0
ONLY_IDLE=0
IDLE_CONNS=10000
IDLE_HOLD=5
JSON_OUT="$BENCH_DIR/results/latest.json"
INSTALL=1
KEEP_TMP=0
PIN=0
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
WARMUP=${WARMUP:-2s}
# Requests per client connection before the proxy closes it: linger's default
# (listener.max_requests_per_connection) and nginx's (keepalive_requests).
REQUESTS_PER_CONN=1000
POST_BYTES=16384

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --workloads) WORKLOADS=${2:?}; shift 2 ;;
        --workloads=*) WORKLOADS=${1#*=}; shift ;;
        --threads) THREADS_LIST=${2:?}; shift 2 ;;
        --threads=*) THREADS_LIST=${1#*=}; shift ;;
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --rounds=*) ROUNDS=${1#*=}; shift ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --duration=*) DURATION=${1#*=}; shift ;;
        --targets) TARGETS=${2:?}; shift 2 ;;
        --targets=*) TARGETS=${1#*=}; shift ;;
        --idle-conns) IDLE_CONNS=${2:?}; shift 2 ;;
        --idle-conns=*) IDLE_CONNS=${1#*=}; shift ;;
        --idle-hold) IDLE_HOLD=${2:?}; shift 2 ;;
        --idle-hold=*) IDLE_HOLD=${1#*=}; shift ;;
        --json) JSON_OUT=${2:?}; shift 2 ;;
        --json=*) JSON_OUT=${1#*=}; shift ;;
        --skip-idle) SKIP_IDLE=1; shift ;;
        --only-idle) ONLY_IDLE=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --pin) PIN=1; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

((SKIP_IDLE && ONLY_IDLE)) && die "--skip-idle and --only-idle are mutually exclusive"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "--idle-conns must be a positive integer"
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "--duration must look like 10s, 1m"
[[ $WRK_CONNS =~ ^[1-9][0-9]*$ ]] || die "WRK_CONNS must be a positive integer"
IFS=, read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
for w in "${WORKLOAD_LIST[@]}"; do
    [[ ,$ALL_WORKLOADS, == *",$w,"* ]] || die "unknown workload '$w' ($ALL_WORKLOADS)"
done
((${#WORKLOAD_LIST[@]})) || die "no workloads"
IFS=, read -r -a THREADS <<<"$THREADS_LIST"
for t in "${THREADS[@]}"; do [[ $t =~ ^[1-9][0-9]*$ ]] || die "bad --threads entry: '$t'"; done
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in direct|linger|nginx|haproxy) ;; *) die "unknown target '$t' (direct,linger,nginx,haproxy)" ;; esac
done
((${#TARGET_LIST[@]})) || die "no targets"
[[ $JSON_OUT = /* ]] || JSON_OUT="$PWD/$JSON_OUT"
NCPU=$(nproc)
if ((PIN)); then
    command -v taskset >/dev/null || die "--pin needs taskset (util-linux)"
    for t in "${THREADS[@]}"; do
        ((t < NCPU)) || die "--pin: T=$t leaves no cpu for the origin and wrk on this $NCPU-cpu machine"
    done
fi

has_target() { local x; for x in "${TARGET_LIST[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }

# With --pin, for T proxy threads: the proxy's cpus (the last T) and the others' (the rest).
proxy_cpus() { echo "$((NCPU - $1))-$((NCPU - 1))"; }
load_cpus() { echo "0-$((NCPU - $1 - 1))"; }
# pin_tree PID CPUS: every thread of PID and of its descendants onto CPUS.
pin_tree() {
    local p
    for p in "$1" $(descendants "$1"); do
        taskset -a -p -c "$2" "$p" >/dev/null || die "taskset -a -p -c $2 $p failed"
    done
}
# What runs load (wrk) is prefixed with LOAD_PREFIX: taskset onto the load cpus with --pin.
LOAD_PREFIX=()
RUN_BENCH=$((ONLY_IDLE ? 0 : 1))
RUN_IDLE=$((SKIP_IDLE ? 0 : 1))
IDLE_TARGETS=()
for t in linger nginx haproxy; do has_target "$t" && IDLE_TARGETS+=("$t"); done
((${#IDLE_TARGETS[@]})) || RUN_IDLE=0

# ---------------------------------------------------------------- tools ----
export PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=lib/tools.sh
source "$LIB/tools.sh"
install_tools
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

NEED_LINGER=0
if has_target linger; then NEED_LINGER=1; fi
if ((NEED_LINGER)); then
    if [[ -n ${LINGER_BIN:-} ]]; then
        [[ -x $LINGER_BIN ]] || die "LINGER_BIN=$LINGER_BIN is not executable"
    else
        echo "== cargo build --release -p linger" >&2
        (cd "$REPO_DIR" && cargo build --release -p linger)
        LINGER_BIN="$REPO_DIR/target/release/linger"
    fi
    LINGER_BIN=$(cd "$(dirname "$LINGER_BIN")" && pwd)/$(basename "$LINGER_BIN")
fi

# ------------------------------------------------------ process control ----
WORK=$(mktemp -d "${TMPDIR:-/tmp}/linger-bench.XXXXXX")
SCRIPT=run.sh
# shellcheck source=lib/proc.sh
source "$LIB/proc.sh"
if ((RUN_IDLE && IDLE_CONNS > CONN_LIMIT)); then
    echo "warning: --idle-conns $IDLE_CONNS exceeds what the fd limit ($NOFILE) allows; expect failures" >&2
fi
RUNS_JSONL="$WORK/runs.jsonl"
IDLE_JSONL="$WORK/idle.jsonl"
CHECKS_JSONL="$WORK/checks.jsonl"
WORKLOADS_JSONL="$WORK/workloads.jsonl"
: >"$RUNS_JSONL"; : >"$IDLE_JSONL"; : >"$CHECKS_JSONL"; : >"$WORKLOADS_JSONL"

# ------------------------------------------------------------- workloads ---
# Each workload: the path wrk asks for, its connection count and extra wrk arguments.
POST_LUA="$WORK/post16k.lua"
cat >"$POST_LUA" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", $POST_BYTES)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
MAX_CONNS=$WRK_CONNS
declare -A W_PATH W_CONNS W_ARGS W_WHAT
for w in "${WORKLOAD_LIST[@]}"; do
    W_PATH[$w]=/ W_CONNS[$w]=$WRK_CONNS W_ARGS[$w]=""
    case "$w" in
        small) W_WHAT[$w]="GET / (2-byte body), $WRK_CONNS keep-alive connections" ;;
        conns1000) W_CONNS[$w]=1000 W_WHAT[$w]="GET / (2-byte body), 1000 keep-alive connections" ;;
        close) W_ARGS[$w]="-H|Connection: close"
            W_WHAT[$w]="GET / with Connection: close: one request per connection, $WRK_CONNS at a time" ;;
        resp64k) W_PATH[$w]=/64k W_WHAT[$w]="GET /64k (65,536-byte static file), $WRK_CONNS connections" ;;
        resp1m) W_PATH[$w]=/1m W_WHAT[$w]="GET /1m (1,048,576-byte static file), $WRK_CONNS connections" ;;
        post16k) W_PATH[$w]=/post W_ARGS[$w]="-s|$POST_LUA"
            W_WHAT[$w]="POST /post with a $POST_BYTES-byte body the origin reads whole, $WRK_CONNS connections" ;;
    esac
    ((W_CONNS[$w] > MAX_CONNS)) && MAX_CONNS=${W_CONNS[$w]}
    "$PY" -c 'import json,sys; a=sys.argv[1:]; print(json.dumps(dict(name=a[0], path=a[1], conns=int(a[2]),
        wrk_args=[x for x in a[3].split("|") if x], what=a[4])))' \
        "$w" "${W_PATH[$w]}" "${W_CONNS[$w]}" "${W_ARGS[$w]}" "${W_WHAT[$w]}" >>"$WORKLOADS_JSONL"
done
# A proxy holds a client and an upstream connection per busy client.
if ((RUN_BENCH && 2 * MAX_CONNS + 100 > CONN_LIMIT)); then
    die "$MAX_CONNS client connections need an fd limit of at least $((2 * MAX_CONNS + 2100)) (it is $NOFILE)"
fi

# ------------------------------------------------------------- equal work --
# What every proxy does (bench/lib/proc.sh reads these): add X-Forwarded-For, close a
# client connection after REQUESTS_PER_CONN responses, and keep an upstream pool no
# smaller than the largest client count (nginx `keepalive` is per worker; HAProxy's pool
# has no cap by default). linger runs with its shipped defaults, which do all three, and
# read request bodies up to 64 KiB into memory before forwarding them; nginx buffers
# bodies too, in memory up to client_body_buffer_size and in a temporary file beyond, so
# it gets the same 64 KiB in memory (its default, 8k, would write the 16 KiB bodies of
# post16k to disk). HAProxy streams bodies, as shipped.
PROXY_FORWARDED_FOR=1
PROXY_MAX_REQUESTS=$REQUESTS_PER_CONN
NGINX_UPSTREAM_KEEPALIVE=$((MAX_CONNS > 1024 ? MAX_CONNS : 1024))
NGINX_BODY_BUFFER=64k
HAPROXY_POOL_MAX_CONN=""

# ---------------------------------------------------------------- origin ---

launch_origin "$WORK/origin"

# ---------------------------------------------------------------- proxies --
declare -A TPID TPORT

start_nginx_proxy() { # threads
    local T=$1 port
    port=$(free_port)
    launch_nginx_proxy "$WORK/nginx-t$T-$port" "$port" "$T" || return 1
    TPID[nginx]=$LAUNCHED_PID TPORT[nginx]=$port
}

start_haproxy() { # threads
    local T=$1 port
    port=$(free_port)
    launch_haproxy "$WORK/haproxy-t$T-$port" "$port" "$T" 30s || return 1
    TPID[haproxy]=$LAUNCHED_PID TPORT[haproxy]=$port
}

start_linger() { # threads [config]
    local T=$1 mode=${2:-flags} port dir
    port=$(free_port)
    dir="$WORK/linger-t$T-$mode-$port"
    mkdir -p "$dir"
    local cmd
    if [[ $mode == config ]]; then
        cat >"$dir/linger.toml" <<EOF
[admin]
enabled = false

[runtime]
workers = $T
access_log = "off"

[[listener]]
address = "127.0.0.1:$port"
idle_timeout = "300s"

[[route]]
cluster = "origin"

[[cluster]]
name = "origin"
endpoints = ["127.0.0.1:$ORIGIN_PORT"]
EOF
        cmd=("$LINGER_BIN" serve --config "$dir/linger.toml")
    else
        cmd=("$LINGER_BIN" serve --listen "127.0.0.1:$port" --upstream "127.0.0.1:$ORIGIN_PORT"
            --workers "$T" --access-log off --admin off)
    fi
    echo "${cmd[*]}" >"$dir/cmdline"
    "${cmd[@]}" >"$dir/linger.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    wait_ready linger "$pid" "$port" "$dir/linger.log" || return 1
    TPID[linger]=$pid TPORT[linger]=$port
}

start_target() { # target threads [mode]
    case "$1" in
        direct) TPID[direct]=$ORIGIN_PID TPORT[direct]=$ORIGIN_PORT ;;
        nginx) start_nginx_proxy "$2" ;;
        haproxy) start_haproxy "$2" ;;
        linger) start_linger "$2" "${3:-flags}" ;;
    esac
}

stop_target() {
    [[ $1 == direct ]] || stop_tree "${TPID[$1]}"
    unset "TPID[$1]" "TPORT[$1]"
}

# check_target TARGET THREADS: equal_work.py through the target; the result goes to
# CHECKS_JSONL, a failure to the problems.
check_target() {
    local t=$1 T=$2 res rc=0
    res=$("$PY" "$LIB/equal_work.py" --port "${TPORT[$t]}" --check-log "$ORIGIN_CHECK_LOG" \
        --max-requests "$REQUESTS_PER_CONN" --post-bytes "$POST_BYTES") || rc=$?
    "$PY" -c 'import json,sys; print(json.dumps(dict(target=sys.argv[1], threads=int(sys.argv[2]),
        result=json.loads(sys.argv[3] or "null"))))' "$t" "$T" "$res" >>"$CHECKS_JSONL"
    ((rc == 0)) || problem "$t" "check-t$T" "equal-work check failed: $res"
}

# ------------------------------------------------------------------- run ---
# round_order R: the targets of round R in the order they are measured. `direct` (the
# reference, no proxy) goes first in every round and the proxies rotate behind it, so that
# over as many rounds as there are proxies each proxy is measured once in each position,
# once right after `direct` among them. (The position matters: a proxy measured right
# after wrk drove the origin directly can get a smaller share of its CPU for the whole
# round, see docs/benchmarks.md, "The order of the rounds".)
round_order() {
    local r=$1 t k proxies=()
    for t in "${ACTIVE[@]}"; do
        if [[ $t == direct ]]; then echo direct; else proxies+=("$t"); fi
    done
    local m=${#proxies[@]}
    for ((k = 0; k < m; k++)); do echo "${proxies[(k + r - 1) % m]}"; done
}

echo "== linger bench: targets=${TARGET_LIST[*]} workloads=${WORKLOAD_LIST[*]} threads=${THREADS[*]}" \
    "rounds=$ROUNDS duration=$DURATION wrk -t$WRK_THREADS;" \
    "idle=$( ((RUN_IDLE)) && echo "${IDLE_TARGETS[*]} x $IDLE_CONNS conns" || echo off)"
echo "   origin nginx pid $ORIGIN_PID on 127.0.0.1:$ORIGIN_PORT; nofile $NOFILE; work dir $WORK"
[[ -n ${LINGER_BIN:-} ]] && echo "   linger: $LINGER_BIN"

if ((RUN_BENCH)); then
    for T in "${THREADS[@]}"; do
        echo "== threads=$T: starting targets"
        ACTIVE=()
        for t in "${TARGET_LIST[@]}"; do
            if start_target "$t" "$T"; then
                ACTIVE+=("$t")
                echo "   $t: pid ${TPID[$t]} port ${TPORT[$t]}"
                [[ $t == direct ]] || check_target "$t" "$T"
            fi
        done
        if ((${#ACTIVE[@]} == 0)); then continue; fi
        if ((PIN)); then
            pin_tree "$ORIGIN_PID" "$(load_cpus "$T")"
            for t in "${ACTIVE[@]}"; do
                [[ $t == direct ]] || pin_tree "${TPID[$t]}" "$(proxy_cpus "$T")"
            done
            LOAD_PREFIX=(taskset -c "$(load_cpus "$T")")
            echo "   pinned: proxies on cpus $(proxy_cpus "$T"), origin and wrk on cpus $(load_cpus "$T")"
        fi
        for w in "${WORKLOAD_LIST[@]}"; do
            IFS='|' read -r -a wargs <<<"${W_ARGS[$w]}"
            wrk_base=("-t$WRK_THREADS" "-c${W_CONNS[$w]}" "${wargs[@]}")
            if [[ $WARMUP != 0 ]]; then
                for t in "${ACTIVE[@]}"; do
                    "${LOAD_PREFIX[@]}" timeout 120 wrk "${wrk_base[@]}" "-d$WARMUP" "http://127.0.0.1:${TPORT[$t]}${W_PATH[$w]}" \
                        >/dev/null 2>&1 || true
                done
            fi
            for ((r = 1; r <= ROUNDS; r++)); do
                echo "== threads=$T workload=$w round $r/$ROUNDS"
                for t in $(round_order "$r"); do
                    if ! alive "${TPID[$t]}"; then
                        problem "$t" "bench-$w-t$T-r$r" "process ${TPID[$t]} is gone"
                        continue
                    fi
                    args=(--workload "$w" --target "$t" --threads "$T" --round "$r"
                        --url "http://127.0.0.1:${TPORT[$t]}${W_PATH[$w]}"
                        --duration "$DURATION" --wrk-threads "$WRK_THREADS" --conns "${W_CONNS[$w]}"
                        --pid "${TPID[$t]}" --out "$RUNS_JSONL" --raw-dir "$WORK/wrk")
                    for x in "${wargs[@]}"; do args+=("--wrk-arg=$x"); done
                    [[ $t != direct ]] && args+=(--origin-pid "$ORIGIN_PID")
                    "${LOAD_PREFIX[@]}" "$PY" "$LIB/measure_wrk.py" "${args[@]}" ||
                        problem "$t" "bench-$w-t$T-r$r" "measurement failed (see round line above)"
                done
            done
        done
        for t in "${ACTIVE[@]}"; do stop_target "$t"; done
    done
fi

# idle_probe TARGET PORT PID CONNS HOLD: idle_conns.py; sets IDLE_RES to its JSON (or
# null) and records problems.
idle_probe() {
    local t=$1 rc=0
    IDLE_RES=$("$PY" "$BENCH_DIR/idle_conns.py" --port "$2" --pid "$3" --conns "$4" --hold "$5") || rc=$?
    if [[ -z $IDLE_RES ]]; then
        problem "$t" idle "idle_conns.py failed (exit $rc)"
        IDLE_RES=null
    elif ((rc != 0)); then
        problem "$t" idle "not all connections were opened and held (see idle table)"
    fi
}

# nginx_prealloc_probe: the RSS of a fresh nginx with worker_connections NGINX_PROBE_SLOTS
# (the rest of its config as in the idle test), measured as the idle test measures its
# "before". Sets PROBE_RES to idle_conns.py's JSON (or null).
NGINX_PROBE_SLOTS=64
nginx_prealloc_probe() {
    local port
    PROBE_RES=null
    port=$(free_port)
    launch_nginx_proxy "$WORK/nginx-slots$NGINX_PROBE_SLOTS-$port" "$port" 1 "$NGINX_PROBE_SLOTS" || return 0
    idle_probe nginx "$port" "$LAUNCHED_PID" 0 0
    PROBE_RES=$IDLE_RES
    stop_tree "$LAUNCHED_PID"
}

if ((RUN_IDLE)); then
    ((PIN)) && pin_tree "$ORIGIN_PID" "0-$((NCPU - 1))"
    echo "== idle keep-alive test: $IDLE_CONNS connections, hold ${IDLE_HOLD}s, 1 worker/thread"
    for t in "${IDLE_TARGETS[@]}"; do
        PROBE_RES=null
        if [[ $t == nginx ]]; then
            echo "   nginx: RSS with worker_connections $NGINX_PROBE_SLOTS (preallocation probe)"
            nginx_prealloc_probe
        fi
        if ! start_target "$t" 1 config; then
            "$PY" -c 'import json,sys; print(json.dumps(dict(target=sys.argv[1], error="failed to start")))' \
                "$t" >>"$IDLE_JSONL"
            continue
        fi
        echo "   $t: pid ${TPID[$t]} port ${TPORT[$t]}"
        idle_probe "$t" "${TPORT[$t]}" "${TPID[$t]}" "$IDLE_CONNS" "$IDLE_HOLD"
        alive "${TPID[$t]}" || problem "$t" idle "process ${TPID[$t]} died during the idle test"
        "$PY" -c 'import json,sys; a=sys.argv[1:]; r=dict(target=a[0], threads=1, result=json.loads(a[1]))
if a[2] != "null": r["prealloc_probe"] = dict(slots=int(a[3]), configured_slots=int(a[4]), result=json.loads(a[2]))
print(json.dumps(r))' "$t" "$IDLE_RES" "$PROBE_RES" "$NGINX_PROBE_SLOTS" "$CONN_LIMIT" >>"$IDLE_JSONL"
        stop_target "$t"
    done
fi

CONFIG_JSON=$("$PY" -c '
import json, sys
a = sys.argv[1:]
print(json.dumps(dict(
    targets=a[0].split(","), threads=[int(x) for x in a[1].split(",")], rounds=int(a[2]),
    duration=a[3], wrk_threads=int(a[4]), wrk_conns=int(a[5]), warmup=a[6],
    idle_conns=int(a[7]), idle_hold_s=float(a[8]), bench=a[9] == "1", idle=a[10] == "1",
    nofile=int(a[11]), pin=a[15] == "1", origin="nginx 1 worker: / return 200 \"ok\\n\"; /64k, /1m static files; "
    "/post reads the body, then 200 \"ok\\n\"",
    workloads=[json.loads(x) for x in open(a[12])],
    equal_work=dict(x_forwarded_for=True, requests_per_client_connection=int(a[13]),
                    nginx_upstream_keepalive=int(a[14]), nginx_client_body_buffer_size="64k",
                    haproxy_pool_max_conn=None,
                    linger="shipped defaults"))))
' "$TARGETS" "$THREADS_LIST" "$ROUNDS" "$DURATION" "$WRK_THREADS" "$WRK_CONNS" "$WARMUP" \
    "$IDLE_CONNS" "$IDLE_HOLD" "$RUN_BENCH" "$RUN_IDLE" "$NOFILE" "$WORKLOADS_JSONL" \
    "$REQUESTS_PER_CONN" "$NGINX_UPSTREAM_KEEPALIVE" "$PIN")

"$PY" "$LIB/report.py" --runs "$RUNS_JSONL" --idle "$IDLE_JSONL" --checks "$CHECKS_JSONL" \
    --errors "$ERRORS_JSONL" --config "$CONFIG_JSON" --json "$JSON_OUT" --repo "$REPO_DIR" \
    ${LINGER_BIN:+--linger-bin "$LINGER_BIN"}

if [[ -s $ERRORS_JSONL ]]; then
    exit 1
fi
