# shellcheck shell=bash
# Helpers for the shell tests. Source it from a bash test:
#
#   . "$(dirname "$0")/lib.sh"
#   lib_tmpdir                     # -> $LIB_TMPDIR
#   lib_start_redis                # -> $REDIS_URL $REDIS_SOCK $REDIS_PORT $REDIS_PID
#   lib_start_dockerd              # -> $DOCKER_HOST (private dockerd)
#   lib_on_cleanup lib_rm_containers podman "debate-test-$$-"
#
# Sourcing installs `trap lib_cleanup EXIT` (and INT/TERM handlers that clean
# up and exit 130/143). Don't replace these traps: register extra cleanup with
# lib_on_cleanup instead. lib_cleanup
#   1. kills the processes we started (lib_start_redis, lib_track_pid),
#      by pid only: TERM, then KILL after 5 s;
#   2. runs the lib_on_cleanup commands, last registered first;
#   3. removes the directories made by lib_tmpdir.
# The exit status of the test is kept.
#
# Functions that register state (lib_tmpdir, lib_start_redis, ...) must be
# called in the test's main shell, not in $(...) or a pipeline, or the
# registration is lost; they refuse to run in a subshell.
#
# Sourcing also exports CONTAINERS_CONF=tests/containers.conf (unless set).

LIB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LIB_ROOT
export CONTAINERS_CONF=${CONTAINERS_CONF:-$LIB_ROOT/tests/containers.conf}

_LIB_PIDS=()
_LIB_TMPDIRS=()
_LIB_HOOKS=()
_LIB_CLEANED=0

lib_log() { echo "[lib] $*" >&2; }
lib_die() { echo "[lib] FATAL: $*" >&2; exit 1; }

_lib_main_shell() {
    [ "$BASH_SUBSHELL" -eq 0 ] ||
        lib_die "${FUNCNAME[1]} must be called in the test's main shell, not in \$(...) or a pipeline"
}

# lib_tmpdir [VAR]: make a new temporary directory, removed at cleanup, and
# store its path in VAR (default LIB_TMPDIR). Paths are kept short (under
# /tmp) so unix sockets inside fit.
lib_tmpdir() {
    _lib_main_shell
    local var=${1:-LIB_TMPDIR} dir
    dir=$(mktemp -d /tmp/debate-test.XXXXXX) || lib_die "mktemp failed"
    _LIB_TMPDIRS+=("$dir")
    printf -v "$var" '%s' "$dir"
    export "${var?}"
}

# lib_track_pid PID...: kill these at cleanup (TERM, then KILL after 5 s).
lib_track_pid() {
    _lib_main_shell
    _LIB_PIDS+=("$@")
}

# lib_on_cleanup CMD [ARGS...]: run at cleanup (last registered runs first).
# One argument is taken as shell code (eval'd); several as a command and its
# arguments. Failures are ignored.
lib_on_cleanup() {
    _lib_main_shell
    [ $# -gt 0 ] || return 0
    if [ $# -eq 1 ]; then
        _LIB_HOOKS+=("$1")
    else
        _LIB_HOOKS+=("$(printf '%q ' "$@")")
    fi
}

# lib_wait_for TIMEOUT_SECONDS CMD [ARGS...]: poll CMD every 0.1 s until it
# succeeds; returns 1 on timeout.
lib_wait_for() {
    local timeout=$1 i
    shift
    for ((i = 0; i < timeout * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    "$@" >/dev/null 2>&1
}

# lib_free_port: print a TCP port on 127.0.0.1 that is free right now.
lib_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# lib_start_redis [redis-server options...]: start a private redis-server
# (daemonize no, in the background) listening on $LIB_TMPDIR/redis-N/redis.sock
# and a free port on 127.0.0.1, with --save '' --appendonly no (options given
# here come later on the command line and override those). Waits for PING.
# Exports REDIS_URL=redis://127.0.0.1:PORT/0, REDIS_SOCK, REDIS_PORT,
# REDIS_PID, REDIS_DIR (holds redis.log).
lib_start_redis() {
    _lib_main_shell
    command -v redis-server >/dev/null || lib_die "redis-server not found (run scripts/install-deps)"
    command -v redis-cli >/dev/null || lib_die "redis-cli not found (run scripts/install-deps)"
    [ -n "${LIB_TMPDIR:-}" ] || lib_tmpdir
    local n=0 dir port pid attempt
    while [ -e "$LIB_TMPDIR/redis-$n" ]; do n=$((n + 1)); done
    dir=$LIB_TMPDIR/redis-$n
    mkdir -p "$dir"
    for attempt in 1 2 3 4 5; do
        port=$(lib_free_port) || lib_die "cannot find a free port"
        redis-server --port "$port" --bind 127.0.0.1 \
            --unixsocket "$dir/redis.sock" --unixsocketperm 700 \
            --daemonize no --save '' --appendonly no \
            --dir "$dir" --logfile "$dir/redis.log" \
            "$@" </dev/null >/dev/null 2>&1 &
        pid=$!
        _LIB_PIDS+=("$pid")
        local i
        for ((i = 0; i < 100; i++)); do
            if ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            if [ "$(redis-cli -s "$dir/redis.sock" ping 2>/dev/null)" = PONG ] &&
                [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
                export REDIS_URL="redis://127.0.0.1:$port/0"
                export REDIS_SOCK="$dir/redis.sock" REDIS_PORT="$port"
                export REDIS_PID="$pid" REDIS_DIR="$dir"
                return 0
            fi
            sleep 0.1
        done
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        # lost the port race? try another one
        grep -q 'Address already in use' "$dir/redis.log" 2>/dev/null || break
        lib_log "port $port taken, retrying ($attempt)"
    done
    tail -n 20 "$dir/redis.log" >&2 2>/dev/null
    lib_die "redis-server did not start (log: $dir/redis.log)"
}

# lib_start_dockerd: start a private dockerd (scripts/start-dockerd) in a new
# tmpdir, export DOCKER_HOST=unix://.../docker.sock and register its stop.
# Exports LIB_DOCKERD_DIR and LIB_DOCKERD_PID.
lib_start_dockerd() {
    _lib_main_shell
    lib_tmpdir LIB_DOCKERD_DIR
    # shellcheck disable=SC2153 # set by lib_tmpdir
    lib_on_cleanup "$LIB_ROOT/scripts/start-dockerd" --stop "$LIB_DOCKERD_DIR"
    LIB_DOCKERD_PID=$("$LIB_ROOT/scripts/start-dockerd" "$LIB_DOCKERD_DIR") ||
        lib_die "cannot start dockerd"
    export LIB_DOCKERD_PID
    export DOCKER_HOST="unix://$LIB_DOCKERD_DIR/docker.sock"
}

# lib_rm_containers ENGINE PREFIX: force-remove ENGINE's containers whose
# name starts with PREFIX (e.g. the per-test namespace). For lib_on_cleanup.
lib_rm_containers() {
    local engine=$1 prefix=$2 names name
    [ -n "$prefix" ] || return 0
    names=$("$engine" ps -a --format '{{.Names}}' 2>/dev/null) || return 0
    for name in $names; do
        case "$name" in
            "$prefix"*) "$engine" rm -f "$name" >/dev/null 2>&1 ;;
        esac
    done
    return 0
}

lib_cleanup() {
    local rc=$?
    [ "$_LIB_CLEANED" -eq 0 ] || return "$rc"
    _LIB_CLEANED=1
    set +e
    local pid i
    # 1. processes we started
    for pid in "${_LIB_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${_LIB_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            lib_log "pid $pid ignored SIGTERM, killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    # 2. registered hooks, last first
    for ((i = ${#_LIB_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${_LIB_HOOKS[i]}"
    done
    # 3. temporary directories
    local dir
    for dir in "${_LIB_TMPDIRS[@]}"; do
        [ -n "$dir" ] && [ -d "$dir" ] && rm -rf -- "$dir"
    done
    return "$rc"
}

trap lib_cleanup EXIT
trap 'lib_cleanup; trap - EXIT; exit 130' INT
trap 'lib_cleanup; trap - EXIT; exit 143' TERM
