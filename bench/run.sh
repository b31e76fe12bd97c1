#!/usr/bin/env bash
# Load benchmark: the same local mock upstream reached directly, through
# nginx (a plain reverse proxy, the native-proxy reference), through weir,
# and through weir with the three example guardrails on every request and
# chunk, in one run. Prints two markdown tables: latency, throughput, CPU
# and RSS; then each proxy's CPU split into user and system time (see
# bench/README.md).
#
#   bench/run.sh
#
# Knobs: BENCH_SEQUENTIAL (3000), BENCH_CONCURRENT (20000), BENCH_CONCURRENCY (16).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

source bench/common.sh
need_debian nginx nginx "for the reference proxy"

build_all

# Pin the proxies to CPU 1 and the mock + load generator to CPU 0 so the
# processes under test do not fight the load for a core (2-core machine).
# BENCH_PROXY_CPU=0 puts the proxies on the load's CPU: a sequential
# request then never waits for an idle vCPU to wake (see README).
pin_proxy="taskset -c ${BENCH_PROXY_CPU:-1}"
pin_load="taskset -c 0"
command -v taskset >/dev/null || { pin_proxy=; pin_load=; }

$pin_load ./target/release/weir-mock-upstream 127.0.0.1:18000 20 2>"$work/mock.log" &
pids+=($!)

sed "s#@ROOT@#$root#g" bench/weir.toml > "$work/weir.toml"
RUST_LOG=warn $pin_proxy ./target/dist/weir serve --config "$work/weir.toml" 2>"$work/weir.log" &
weir_pid=$!
pids+=($weir_pid)
sed "s#@ROOT@#$root#g" bench/weir-policies.toml > "$work/weir-policies.toml"
RUST_LOG=warn $pin_proxy ./target/dist/weir serve --config "$work/weir-policies.toml" 2>"$work/weir-policies.log" &
guarded_pid=$!
pids+=($guarded_pid)
# The three guardrails declare themselves stateless, so weir reuses their
# instances (docs/policies.md, "Instance reuse"); the same guardrails with
# `reuse_instances = 0`: a fresh instance per request.
sed -e 's#18004#18006#; s#18005#18007#' -e 's#^global = true$#global = true\nreuse_instances = 0#' \
    "$work/weir-policies.toml" > "$work/weir-policies-fresh.toml"
RUST_LOG=warn $pin_proxy ./target/dist/weir serve --config "$work/weir-policies-fresh.toml" 2>"$work/weir-policies-fresh.log" &
fresh_pid=$!
pids+=($fresh_pid)

# weir's stack and nothing of weir's own work: the same runtime, allocator,
# hyper server and pooled client, relaying bytes (host/examples/floor.rs).
$pin_proxy ./target/dist/examples/floor 127.0.0.1:18008 http://127.0.0.1:18000 2>"$work/floor.log" &
floor_pid=$!
pids+=($floor_pid)

mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    upstream mock { server 127.0.0.1:18000; keepalive 64; }
    server {
        listen 127.0.0.1:18002;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
NGINX
$pin_proxy nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)

for port in 18000 18001 18002 18004 18006 18008; do
    for _ in $(seq 100); do
        (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.1
    done
done
nginx_workers=$(pgrep -P "$nginx_pid" | paste -sd, -)

$pin_load ./target/release/weir-load \
    "direct=http://127.0.0.1:18000/v1" \
    "nginx=http://127.0.0.1:18002/v1@$nginx_pid,$nginx_workers" \
    "hyper floor=http://127.0.0.1:18008/v1@$floor_pid" \
    "weir=http://127.0.0.1:18001/v1@$weir_pid" \
    "weir, key without limits=http://127.0.0.1:18001/v1@$weir_pid#sk-bench-key-open" \
    "weir+3 guardrails=http://127.0.0.1:18004/v1@$guarded_pid" \
    "weir+3 guardrails, fresh instances=http://127.0.0.1:18006/v1@$fresh_pid"
