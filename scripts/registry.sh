#!/usr/bin/env bash
# A local registry for the README's lifecycle: Debian's docker-registry on
# 127.0.0.1:${REGISTRY_PORT:-5000}, plain HTTP, storage in build/registry.
#   scripts/registry.sh start   (make registry)
#   scripts/registry.sh stop    (make registry-stop)
set -euo pipefail
cd "$(dirname "$0")/.."
port="${REGISTRY_PORT:-5000}"
dir="$PWD/build/registry"
pidfile="$dir/pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
start)
    if running; then
        echo "registry: already running (pid $(cat "$pidfile")) on 127.0.0.1:$(cat "$dir/port")"
        exit 0
    fi
    command -v docker-registry >/dev/null || { echo "registry: docker-registry is missing; run make setup" >&2; exit 1; }
    mkdir -p "$dir/data"
    cat > "$dir/config.yml" <<CFG
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port}
CFG
    setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
    echo $! > "$pidfile"
    echo "$port" > "$dir/port"
    for _ in $(seq 50); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/', timeout=1)" 2>/dev/null; then
            echo "registry: 127.0.0.1:$port (plain HTTP: pass --tls-verify=false); make registry-stop stops it"
            exit 0
        fi
        if ! running; then
            echo "registry: did not start; see $dir/registry.log (is port $port taken?)" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "registry: no answer on 127.0.0.1:$port; see $dir/registry.log" >&2
    exit 1
    ;;
stop)
    if running; then
        kill "$(cat "$pidfile")"
        echo "registry: stopped (its images stay in $dir/data)"
    else
        echo "registry: not running"
    fi
    rm -f "$pidfile"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
