#!/usr/bin/env bash
# Instructions per request through the real gateway, counted by valgrind's
# callgrind: nearly deterministic (the same binary and requests give the
# same count within ~1 % for plain requests whatever else the machine does;
# streams within ~4 %, as how many upstream chunks arrive per wake-up
# depends on load), so a change's effect shows even where bench/run.sh's
# timings are noise. Kernel time (syscalls, page
# resets, wake-ups) is not counted; bench/run.sh measures that.
#
#   bench/instructions.sh            # the rows below, N=300 requests each
#   N=100 bench/instructions.sh
#
# Each row: the mock upstream, weir under callgrind on the row's config,
# 30 warm-up requests, counters zeroed, N sequential requests (the prompt of
# weir-load: a fixed 600-byte system message and a new 300-byte user message
# each time), counters dumped; all of weir's threads are summed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
n=${N:-300}

source bench/common.sh
need_debian valgrind valgrind "to count instructions"
build_all

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

./target/release/weir-mock-upstream 127.0.0.1:18000 20 2>/dev/null &
pids+=($!)

cat > "$work/load.py" <<'PY'
import http.client, json, sys
port, first, n, key, stream = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "stream"
system = ("You are the operations team's assistant. Answer in plain English, "
          "briefly, and say so when you are not sure. " * 6)[:600]
user = "summarize the following text in one sentence, keeping the numbers. " * 5
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(first, first + n):
    body = json.dumps({"model": "chat", "stream": stream, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Request {i}: {user}"[:300]}]})
    conn.request("POST", "/v1/chat/completions", body,
                 {"authorization": "Bearer " + key, "content-type": "application/json"})
    reply = conn.getresponse()
    data = reply.read()
    if reply.status != 200:
        sys.exit(f"{reply.status}: {data[:200]!r}")
PY

# A small instance pool (weir makes one even with no policies): valgrind
# cannot reserve the default one's address space, and weir would fall back
# to on-demand instances (it logs so; the count below stops then), which is
# not the path a fresh instance takes in production. 8 + 32 spare + 8 idle
# slots of 512 MiB of address space each fit; 16 + 32 + 16 do not.
small_pool='s#^\[server\]$#[server]\npolicy_instances = 8#'
sed -e "s#@ROOT@#$root#g" -e "$small_pool" bench/weir.toml > "$work/weir.toml"
sed -e "s#@ROOT@#$root#g" -e "$small_pool" bench/weir-policies.toml > "$work/weir-policies.toml"
# The guardrails declare themselves stateless, so the config above reuses
# their instances; this one makes them fresh per request.
sed -e 's#^global = true$#global = true\nreuse_instances = 0#' \
    "$work/weir-policies.toml" > "$work/weir-policies-fresh.toml"

# count LABEL PORT KEY KIND COMMAND...: COMMAND under callgrind, listening on PORT.
count() {
    local label=$1 port=$2 key=$3 kind=$4
    shift 4
    local out="$work/cg-$RANDOM"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$@" 2>"$out.log" &
    local vg=$!
    pids+=($vg)
    for _ in $(seq 300); do
        (echo > /dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.2
    done
    python3 "$work/load.py" "$port" 0 30 "$key" "$kind"
    if grep -q "falling back to on-demand allocation" "$out.log"; then
        echo "$label: valgrind could not reserve the instance pool; lower policy_instances above" >&2
        exit 1
    fi
    callgrind_control -z "$vg" >/dev/null
    python3 "$work/load.py" "$port" 1000 "$n" "$key" "$kind"
    callgrind_control -d "$vg" >/dev/null
    local total
    total=$(grep -h '^summary:' "$out".* | awk '{s += $2} END {print s}')
    kill "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
    printf '| %s | %s | %d |\n' "$label" "$kind" $((total / n))
}

# weir on CONFIG, under callgrind through `count`: LABEL CONFIG KEY KIND.
count_weir() {
    local port
    port=$(grep -m1 '^listen' "$2" | sed 's/.*:\([0-9]*\)".*/\1/')
    count "$1" "$port" "$3" "$4" ./target/dist/weir serve --config "$2"
}

echo "| target | request | instructions per request |"
echo "|---|---|---|"
floor=(./target/dist/examples/floor 127.0.0.1:18008 http://127.0.0.1:18000)
count "hyper floor" 18008 - plain "${floor[@]}"
count "hyper floor" 18008 - stream "${floor[@]}"
count_weir "weir, key without limits" "$work/weir.toml" sk-bench-key-open plain
count_weir "weir (key with limits)" "$work/weir.toml" sk-bench-key-0001 plain
count_weir "weir (key with limits)" "$work/weir.toml" sk-bench-key-0001 stream
count_weir "weir+3 guardrails" "$work/weir-policies.toml" sk-bench-key-0001 plain
count_weir "weir+3 guardrails" "$work/weir-policies.toml" sk-bench-key-0001 stream
count_weir "weir+3 guardrails, fresh instances" "$work/weir-policies-fresh.toml" sk-bench-key-0001 plain
count_weir "weir+3 guardrails, fresh instances" "$work/weir-policies-fresh.toml" sk-bench-key-0001 stream
