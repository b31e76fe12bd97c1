#!/usr/bin/env bash
# Hot-swap and start-up timings (see bench/README.md): trigger → live for
# each example policy, compiling and from the precompiled cache, and the
# time to listening with 5 policies, cold and warm cache.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
build_all
./target/release/weir-reload-bench ./target/dist/weir ./target/policies
