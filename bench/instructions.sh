#!/usr/bin/env bash
# Instructions per request: how much work each proxy does in user space for one request,
# counted by valgrind's callgrind rather than timed. A count does not move with the load
# of the machine or the scheduler, so it shows a change in per-request work that a run of
# bench/run.sh cannot tell from noise. See bench/README.md ("Instructions per request").
#
# Each proxy (one worker, the same equal-work settings as bench/run.sh) runs under
# callgrind in front of the bench's origin. After a warm-up, counting is switched on for
# a fixed time of wrk load, then the count is divided by the requests wrk completed.
# Only the proxy's own user-space instructions are counted: not the kernel's (system
# calls, TCP), not the origin's or wrk's. Under callgrind a proxy runs about 50 times
# slower, so it is the bottleneck and each turn of its event loop finds more work ready
# than it would at full speed: loop overhead per request is lower than in a normal run,
# for every proxy alike.
#
# Usage: bench/instructions.sh [options]
#   --targets LIST     subset of linger,haproxy (default: both)
#   --workloads LIST   subset of small,close (default: both)
#   --seconds N        counted seconds of load per target and workload (default 4)
#   --json FILE        where to write the JSON report (default bench/results/instructions.json)
#   --top N            also list each target's N costliest functions (default 12)
#   --no-install       do not apt-get install missing tools (valgrind, wrk, nginx, haproxy)
#   --keep-tmp         keep the temporary directory (configs, logs, callgrind files)
#   -h, --help         this help
# Environment:
#   LINGER_BIN         use this linger binary instead of `cargo build --release -p linger`
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
LIB="$BENCH_DIR/lib"
PY=${PYTHON:-python3}

TARGETS="linger,haproxy"
WORKLOADS="small,close"
SECONDS_COUNTED=4
JSON_OUT="$BENCH_DIR/results/instructions.json"
TOP=12
INSTALL=1
KEEP_TMP=0
CONNS=16

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "instructions.sh: $*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --targets) TARGETS=${2:?}; shift 2 ;;
        --targets=*) TARGETS=${1#*=}; shift ;;
        --workloads) WORKLOADS=${2:?}; shift 2 ;;
        --workloads=*) WORKLOADS=${1#*=}; shift ;;
        --seconds) SECONDS_COUNTED=${2:?}; shift 2 ;;
        --seconds=*) SECONDS_COUNTED=${1#*=}; shift ;;
        --json) JSON_OUT=${2:?}; shift 2 ;;
        --json=*) JSON_OUT=${1#*=}; shift ;;
        --top) TOP=${2:?}; shift 2 ;;
        --top=*) TOP=${1#*=}; shift ;;
        --no-install) INSTALL=0; shift ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $SECONDS_COUNTED =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a positive integer"
[[ $TOP =~ ^[0-9]+$ ]] || die "--top must be a number"
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in linger|haproxy) ;; *) die "unknown target '$t' (linger,haproxy)" ;; esac
done
IFS=, read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
for w in "${WORKLOAD_LIST[@]}"; do
    case "$w" in small|close) ;; *) die "unknown workload '$w' (small,close)" ;; esac
done
[[ $JSON_OUT = /* ]] || JSON_OUT="$PWD/$JSON_OUT"

# ---------------------------------------------------------------- tools ----
export PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=lib/tools.sh
source "$LIB/tools.sh"
install_tools valgrind:valgrind
NGINX=$(command -v nginx)
HAPROXY_REAL=$(command -v haproxy)
VALGRIND=$(command -v valgrind)
CG_CONTROL=$(command -v callgrind_control)

if [[ ,$TARGETS, == *,linger,* ]]; then
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
WORK=$(mktemp -d "${TMPDIR:-/tmp}/linger-instructions.XXXXXX")
SCRIPT=instructions.sh
# shellcheck source=lib/proc.sh
source "$LIB/proc.sh"
RESULTS_JSONL="$WORK/results.jsonl"
: >"$RESULTS_JSONL"

# The equal work of bench/run.sh: X-Forwarded-For, a close after 1,000 requests per client
# connection, no upstream pool cap below the client count (linger's shipped defaults).
PROXY_FORWARDED_FOR=1
PROXY_MAX_REQUESTS=1000
NGINX_UPSTREAM_KEEPALIVE=1024
NGINX_BODY_BUFFER=64k
HAPROXY_POOL_MAX_CONN=""

launch_origin "$WORK/origin"

# callgrind, counting nothing until it is told to: the start and the warm-up are left out.
# Its dump is named after the PID, which is the program's (valgrind runs it in its own
# process).
CALLGRIND=("$VALGRIND" --tool=callgrind --instr-atstart=no)

start_target() { # target dir port -> LAUNCHED_PID
    local t=$1 dir=$2 port=$3
    mkdir -p "$dir"
    case "$t" in
        linger)
            "${CALLGRIND[@]}" --callgrind-out-file="$dir/callgrind.%p" "$LINGER_BIN" serve --listen "127.0.0.1:$port" \
                --upstream "127.0.0.1:$ORIGIN_PORT" --workers 1 --access-log off --admin off \
                >"$dir/linger.log" 2>&1 &
            LAUNCHED_PID=$!
            STARTED_PIDS+=("$LAUNCHED_PID")
            wait_ready linger "$LAUNCHED_PID" "$port" "$dir/linger.log"
            ;;
        haproxy)
            # launch_haproxy runs "$HAPROXY": a wrapper that runs it under callgrind.
            cat >"$dir/haproxy-callgrind" <<EOF
#!/bin/sh
exec ${CALLGRIND[*]} --callgrind-out-file="$dir/callgrind.%p" "$HAPROXY_REAL" "\$@"
EOF
            chmod +x "$dir/haproxy-callgrind"
            HAPROXY="$dir/haproxy-callgrind" launch_haproxy "$dir" "$port" 1 30s
            ;;
    esac
}

wrk_requests() { # seconds url [header]
    local out
    out=$(wrk -t1 -c"$CONNS" -d"$1s" ${3:+-H "$3"} "$2") || return 1
    awk '/requests in/{print $1}' <<<"$out"
}

measure() { # target workload
    local t=$1 w=$2 port dir pid header="" n f ir
    [[ $w == close ]] && header="Connection: close"
    port=$(free_port)
    dir="$WORK/$t-$w"
    start_target "$t" "$dir" "$port" || return 1
    pid=$LAUNCHED_PID
    local url="http://127.0.0.1:$port/"
    wrk_requests 2 "$url" "$header" >/dev/null || { problem "$t" "$w" "warm-up failed"; stop_tree "$pid"; return 1; }
    "$CG_CONTROL" -i on "$pid" >/dev/null 2>&1
    n=$(wrk_requests "$SECONDS_COUNTED" "$url" "$header") || { problem "$t" "$w" "wrk failed"; stop_tree "$pid"; return 1; }
    "$CG_CONTROL" -d "$pid" >/dev/null 2>&1
    # The dump is written by the program's own thread: wait for its file.
    for _ in $(seq 100); do
        f=$(ls "$dir"/callgrind."$pid".1 2>/dev/null || true)
        [[ -n $f ]] && grep -q '^summary:' "$f" && break
        sleep 0.1
    done
    stop_tree "$pid"
    [[ -n ${f:-} && -s $f ]] || { problem "$t" "$w" "no callgrind dump"; return 1; }
    ir=$(awk '/^summary:/{print $2; exit}' "$f")
    [[ $ir =~ ^[0-9]+$ && $n =~ ^[0-9]+$ && $n -gt 0 ]] || { problem "$t" "$w" "no count (ir=$ir, requests=$n)"; return 1; }
    "$PY" "$LIB/instructions.py" record --target "$t" --workload "$w" --requests "$n" \
        --instructions "$ir" --seconds "$SECONDS_COUNTED" --conns "$CONNS" \
        --callgrind "$f" --top "$TOP" >>"$RESULTS_JSONL"
    awk -v t="$t" -v w="$w" -v n="$n" -v ir="$ir" \
        'BEGIN { printf "%-8s %-6s %8d requests  %9.0f instructions per request\n", t, w, n, ir / n }'
}

for w in "${WORKLOAD_LIST[@]}"; do
    for t in "${TARGET_LIST[@]}"; do
        measure "$t" "$w" || true
    done
done

mkdir -p "$(dirname "$JSON_OUT")"
"$PY" "$LIB/instructions.py" report --results "$RESULTS_JSONL" --problems "$ERRORS_JSONL" \
    --repo "$REPO_DIR" ${LINGER_BIN:+--linger-bin "$LINGER_BIN"} --out "$JSON_OUT"
echo "== report: $JSON_OUT"
[[ -s $ERRORS_JSONL ]] && exit 1
exit 0
