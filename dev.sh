#!/usr/bin/env bash
# weir's two entry points. Needs only rustup + cargo; installs the rest.
#
#   ./dev.sh run [weir serve args…]   build everything, then run the gateway
#   ./dev.sh test                     build everything, then run every test
#   ./dev.sh build                    build everything
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

build() {
    log "building the weir host (release)"
    cargo build --release --locked -p weir
}

cmd="${1:-run}"
shift || true
case "$cmd" in
    build)
        build
        ;;
    run)
        build
        log "starting weir: client API on 127.0.0.1:4000, admin on 127.0.0.1:4001"
        exec ./target/release/weir serve "$@"
        ;;
    test)
        build
        log "running every test (release profile: shares the build above)"
        cargo test --release --locked --workspace
        ;;
    *)
        echo "usage: $0 run|test|build" >&2
        exit 2
        ;;
esac
