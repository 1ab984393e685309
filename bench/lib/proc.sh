# Process control shared by bench/run.sh and bench/slow.sh (sourced, not run).
# The sourcing script sets SCRIPT (its name, for messages), PY, LIB, KEEP_TMP and WORK
# (a fresh temporary directory), then sources this file, which:
# - raises the fd limit and sets NOFILE and CONN_LIMIT (connections the proxies may take);
# - keeps STARTED_PIDS and stops every started process by PID on exit (stop_tree);
# - records problems in $WORK/problems.jsonl (ERRORS_JSONL);
# - gives free_port, wait_ready, the nginx config pieces NGINX_TEMP_PATHS, NGINX_USER,
#   launch_origin (which needs NGINX) and launch_nginx_proxy / launch_haproxy (which need
#   NGINX, HAPROXY and ORIGIN_PORT).

# Every proxy may hold thousands of connections: raise the fd limit; children inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
# Connection limits configured into nginx/haproxy: leave fds for the rest.
if ((NOFILE > 4000)); then CONN_LIMIT=$((NOFILE - 2000)); else CONN_LIMIT=$((NOFILE / 2)); fi

ERRORS_JSONL="$WORK/problems.jsonl"
: >"$ERRORS_JSONL"
STARTED_PIDS=()

alive() { [[ -e /proc/$1/stat ]] && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null; }

descendants() {
    local kid
    for kid in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$kid"
        descendants "$kid"
    done
}

forget_pid() {
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]}")
}

# Stop a process we started (and its descendants, e.g. nginx workers) by PID:
# SIG (default TERM), 5 s grace, then KILL.
stop_tree() {
    local pid=$1 sig=${2:-TERM} kids i k
    kids=$(descendants "$pid")
    if alive "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for k in $kids; do
        alive "$k" && kill -KILL "$k" 2>/dev/null || true
    done
    forget_pid "$pid"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        stop_tree "${STARTED_PIDS[i]}"
    done
    if ((rc == 130 || rc == 143)); then
        echo "$SCRIPT: interrupted; all started processes stopped" >&2
    elif ((rc != 0 && rc != 1)); then
        echo "$SCRIPT: exiting with status $rc; logs in $WORK:" >&2
        local f
        for f in "$WORK"/*.log "$WORK"/*/*.log "$WORK"/*/*/*.log; do
            [[ -s $f ]] || continue
            echo "--- $f (last 10 lines)" >&2
            tail -n 10 "$f" >&2
        done
        KEEP_TMP=1
    fi
    ((rc == 1)) && KEEP_TMP=1 # problems were reported: keep the logs they point to
    if ((KEEP_TMP)); then
        echo "$SCRIPT: temporary files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

problem() { # target phase message
    "$PY" -c 'import json,sys; print(json.dumps(dict(target=sys.argv[1], phase=sys.argv[2], message=sys.argv[3])))' \
        "$1" "$2" "$3" >>"$ERRORS_JSONL"
    echo "!! [$1/$2] $3" >&2
}

free_port() { "$PY" "$LIB/ports.py" free 1; }

# wait_ready NAME PID PORT LOG -> 0 if ready; records a problem otherwise
wait_ready() {
    local name=$1 pid=$2 port=$3 log=$4 err
    if err=$("$PY" "$LIB/ports.py" wait "$port" --pid "$pid" --timeout 20 --http 2>&1); then
        return 0
    fi
    local tailtxt=""
    [[ -s $log ]] && tailtxt=$(tail -n 8 "$log" | sed 's/^/   | /')
    problem "$name" start "$err; last lines of $log:"$'\n'"${tailtxt:-   | <empty>}"
    stop_tree "$pid"
    return 1
}

NGINX_TEMP_PATHS='client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;'
NGINX_USER=""
[[ $(id -u) == 0 ]] && NGINX_USER="user root root;"

# launch_origin DIR: the origin, an nginx of its own (1 worker, access log off except for
# /_check, keep-alive without limits) on a free port; sets ORIGIN_DIR, ORIGIN_PORT,
# ORIGIN_PID and ORIGIN_CHECK_LOG, or dies. Locations:
#   /, /small   `return 200 "ok\n"` (for a POST too: nginx answers at once, discards the body)
#   /64k, /1m   static files of 65,536 and 1,048,576 random bytes
#   /post       reads the whole request body before it answers 200 "ok\n": the mirror
#               module reads the body (its subrequest is an internal 204), then the static
#               handler refuses POST with 405, which error_page turns into a GET of /_ok.
#               The origin holds the connection until the last body byte, as an
#               application reading a form would.
#   /_check     as /post (it proxies to /post on this origin), and logs to ORIGIN_CHECK_LOG
#               one JSON line per request with the headers and byte count it received
#               (bench/lib/equal_work.py reads it).
launch_origin() {
    ORIGIN_DIR=$1
    ORIGIN_PORT=$(free_port)
    ORIGIN_CHECK_LOG="$ORIGIN_DIR/check.log"
    mkdir -p "$ORIGIN_DIR/tmp"
    head -c 65536 /dev/urandom >"$ORIGIN_DIR/64k.bin"
    head -c 1048576 /dev/urandom >"$ORIGIN_DIR/1m.bin"
    printf 'ok\n' >"$ORIGIN_DIR/ok.txt"
    cat >"$ORIGIN_DIR/nginx.conf" <<EOF
$NGINX_USER
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $ORIGIN_DIR/nginx.pid;
error_log $ORIGIN_DIR/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    $NGINX_TEMP_PATHS
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_max_body_size 1m;
    client_body_buffer_size 64k; # bodies up to 64 KiB are read into memory, not a file
    default_type text/plain;
    log_format check escape=json '{"request_uri":"\$request_uri","method":"\$request_method",'
        '"request_length":\$request_length,"content_length":"\$content_length",'
        '"x_forwarded_for":"\$http_x_forwarded_for","x_forwarded_proto":"\$http_x_forwarded_proto",'
        '"x_forwarded_host":"\$http_x_forwarded_host","via":"\$http_via","connection":"\$http_connection"}';
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        location = /small { return 200 "ok\n"; }
        location = /64k { alias $ORIGIN_DIR/64k.bin; }
        location = /1m { alias $ORIGIN_DIR/1m.bin; }
        location = /post {
            mirror /_sink;
            mirror_request_body on;
            alias $ORIGIN_DIR/ok.txt;
            error_page 405 =200 /_ok;
        }
        location = /_sink { internal; return 204; }
        location = /_ok { internal; return 200 "ok\n"; }
        location = /_check {
            access_log $ORIGIN_CHECK_LOG check;
            proxy_pass http://127.0.0.1:$ORIGIN_PORT/post;
        }
        location / { return 200 "ok\n"; }
    }
}
EOF
    "$NGINX" -e "$ORIGIN_DIR/error.log" -p "$ORIGIN_DIR" -c "$ORIGIN_DIR/nginx.conf" >"$ORIGIN_DIR/stdout.log" 2>&1 &
    ORIGIN_PID=$!
    STARTED_PIDS+=("$ORIGIN_PID")
    wait_ready origin "$ORIGIN_PID" "$ORIGIN_PORT" "$ORIGIN_DIR/error.log" || die "origin nginx did not start"
}

# What the proxies launched below do besides proxying. The defaults are slow.sh's; run.sh
# sets them so that every proxy does the same work as linger's defaults (bench/README.md):
# PROXY_FORWARDED_FOR=1     add X-Forwarded-For (nginx $proxy_add_x_forwarded_for,
#                           HAProxy `option forwardfor`)
# PROXY_MAX_REQUESTS=N      close a client connection after its Nth response, which carries
#                           `Connection: close` (nginx keepalive_requests; HAProxy counts in
#                           a session variable); 0 = never
# NGINX_UPSTREAM_KEEPALIVE  idle upstream connections nginx keeps per worker (`keepalive`)
# NGINX_BODY_BUFFER         nginx `client_body_buffer_size`: request bodies up to this are
#                           buffered in memory, larger ones in a temporary file; empty =
#                           nginx's default (8k on x86-64)
# HAPROXY_POOL_MAX_CONN     HAProxy's `pool-max-conn`; empty = HAProxy's default (no cap)
PROXY_FORWARDED_FOR=0
PROXY_MAX_REQUESTS=0
NGINX_UPSTREAM_KEEPALIVE=64
NGINX_BODY_BUFFER=""
HAPROXY_POOL_MAX_CONN=64

# launch_nginx_proxy DIR PORT WORKERS [WORKER_CONNECTIONS]: nginx as a reverse proxy to the
# origin on $ORIGIN_PORT (upstream keepalive $NGINX_UPSTREAM_KEEPALIVE, HTTP/1.1, empty
# Connection header), logs off, worker_connections $CONN_LIMIT unless given; waits until it
# answers and sets LAUNCHED_PID. Returns 1 (with a problem recorded) otherwise.
launch_nginx_proxy() {
    local dir=$1 port=$2 workers=$3 slots=${4:-$CONN_LIMIT} requests=100000000 xff=""
    ((PROXY_MAX_REQUESTS > 0)) && requests=$PROXY_MAX_REQUESTS
    ((PROXY_FORWARDED_FOR)) && xff='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;'
    local body_buffer=""
    [[ -n $NGINX_BODY_BUFFER ]] && body_buffer="client_body_buffer_size $NGINX_BODY_BUFFER;"
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$NGINX_USER
daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $slots; }
http {
    access_log off;
    $NGINX_TEMP_PATHS
    keepalive_timeout 300s;
    keepalive_requests $requests;
    $body_buffer
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive $NGINX_UPSTREAM_KEEPALIVE;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $xff
        }
    }
}
EOF
    "$NGINX" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
    LAUNCHED_PID=$!
    STARTED_PIDS+=("$LAUNCHED_PID")
    wait_ready nginx "$LAUNCHED_PID" "$port" "$dir/error.log"
}

# launch_haproxy DIR PORT THREADS SERVER_TIMEOUT: HAProxy in http mode with keep-alive on
# both sides and pooled server connections (`http-reuse always`: a client connection's
# first request may take an idle server connection too, as in nginx and linger), logs off;
# as launch_nginx_proxy otherwise.
# maxconn must exceed the idle test's connection count; HAProxy would want 2 fds per
# connection, but idle client connections need only one (server connections are pooled),
# so ulimit-n is fixed at our hard limit.
launch_haproxy() {
    local dir=$1 port=$2 threads=$3 server_timeout=$4 fe_extra="" pool=""
    ((PROXY_FORWARDED_FOR)) && fe_extra+=$'\n    option forwardfor'
    if ((PROXY_MAX_REQUESTS > 0)); then
        # HAProxy 2.6 has no per-connection request limit for HTTP/1 clients: count the
        # requests of the session (one client connection) and announce the close on the
        # last response, which makes HAProxy close the connection after it.
        fe_extra+=$'\n    http-request set-var(sess.requests) var(sess.requests,0),add(1)'
        fe_extra+=$'\n    http-after-response set-header Connection close if { var(sess.requests) -m int ge '"$PROXY_MAX_REQUESTS"' }'
    fi
    [[ -n $HAPROXY_POOL_MAX_CONN ]] && pool=" pool-max-conn $HAPROXY_POOL_MAX_CONN"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn $CONN_LIMIT
    ulimit-n $NOFILE
    no strict-limits
    # no 'log' line: no logging at all

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $CONN_LIMIT
    timeout connect 5s
    timeout client 300s
    timeout server $server_timeout
    timeout http-request 300s
    timeout http-keep-alive 300s

frontend fe
    bind 127.0.0.1:$port$fe_extra
    default_backend be

backend be
    server origin 127.0.0.1:$ORIGIN_PORT$pool
EOF
    "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
    LAUNCHED_PID=$!
    STARTED_PIDS+=("$LAUNCHED_PID")
    wait_ready haproxy "$LAUNCHED_PID" "$port" "$dir/haproxy.log"
}
