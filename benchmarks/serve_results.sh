#!/usr/bin/env bash
# Writes benchmarks/results/serve_<NAME>.{json,md}: starts dpnet-serve on 127.0.0.1 with the
# export, runs dpnet-bench serve against it (concurrency 1, 4, 16 and an in-process row), and
# stops the server by its PID. Run it on a quiet machine; the figures depend on the load.
#
#   benchmarks/serve_results.sh EXPORT_DIR NAME [dpnet-serve options, e.g. --replicas 1]
#
# Environment: PORT (default 8765), REQUESTS per level (default 64), THREADS for the
# in-process row (default: every usable core).
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,9p' "$0"
    exit 2
fi
export_dir=$1
name=$2
shift 2
port=${PORT:-8765}
results=$(cd "$(dirname "$0")" && pwd)/results
ray_dir=$(mktemp -d /tmp/dpnet-ray.XXXXXX)
log=$(mktemp /tmp/dpnet-serve.XXXXXX.log)  # the server's output, kept
echo "dpnet-serve output: $log"
server_command=(dpnet-serve --model "$export_dir" --port "$port" "$@")

RAY_TMPDIR=$ray_dir "${server_command[@]}" >"$log" 2>&1 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" || true; rm -rf "$ray_dir"' EXIT

dpnet-bench serve --model "$export_dir" --url "http://127.0.0.1:$port" --wait-s 600 \
    --requests "${REQUESTS:-64}" ${THREADS:+--threads "$THREADS"} \
    --server "${server_command[*]}" --server-pid "$server" \
    --json "$results/serve_$name.json" --markdown "$results/serve_$name.md"
