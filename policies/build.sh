#!/usr/bin/env bash
# Build every policy under policies/ into target/policies/<folder-name>.wasm
# (SPEC §1). The build itself lives in dev.sh, shared with `./dev.sh run`
# and `./dev.sh test`.
exec "$(dirname "$0")/../dev.sh" policies "$@"
