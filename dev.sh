#!/usr/bin/env bash
# weir's entry points. Needs only rustup + cargo; installs the rest.
#
#   ./dev.sh run [weir serve args…]   build everything, then run the gateway
#   ./dev.sh test                     build everything, then run every test
#   ./dev.sh build                    build the host and every policy
#   ./dev.sh policies                 build the policies (target/policies/*.wasm)
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The [package] name in a Cargo.toml.
packages() {
    awk '
        /^\[/ { in_package = ($0 == "[package]") }
        in_package && /^name *= *"/ { sub(/^name *= *"/, ""); sub(/".*/, ""); print; exit }
    ' "$1"
}

# Build every policy (and, for tests, the test guests) for wasm32-wasip2 in
# one cargo invocation sharing the workspace's target dir, then put each at
# target/<dest>/<folder-name>.wasm (SPEC §1).
build_wasm() {
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        log "installing the wasm32-wasip2 target"
        rustup target add wasm32-wasip2
    fi
    local folders=(policies/*/)
    if [ "${1:-}" = "with-test-guests" ]; then
        folders+=(tests/guests/*/)
    fi
    local args=()
    for folder in "${folders[@]}"; do
        [ -f "$folder/Cargo.toml" ] || continue
        args+=(-p "$(packages "$folder/Cargo.toml")")
    done
    # The `policy` profile (LTO, one codegen unit): ~25 % smaller
    # components, which the gateway compiles ~30 % faster on a hot swap.
    log "building ${#folders[@]} policy components (wasm32-wasip2, profile policy)"
    cargo build --profile policy --locked --target wasm32-wasip2 "${args[@]}"
    for folder in "${folders[@]}"; do
        [ -f "$folder/Cargo.toml" ] || continue
        local name package dest
        name=$(basename "$folder")
        package=$(packages "$folder/Cargo.toml")
        case "$folder" in
            tests/*) dest=target/test-guests ;;
            *) dest=target/policies ;;
        esac
        mkdir -p "$dest"
        cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/policy/${package//-/_}.wasm" "$dest/$name.wasm"
    done
    ls -l target/policies/*.wasm | awk '{printf "    %-40s %8d bytes\n", $9, $5}' >&2
    # The Python, JavaScript and C policies, each with its own toolchain
    # (componentize-py from PyPI, componentize-js from npm, Debian's clang).
    policies/build-other.sh
}

# The Python and JavaScript policy templates, copied and built exactly as
# docs/languages.md tells a policy author to: the walkthrough test runs them.
build_templates() {
    local lang
    for lang in python js; do
        mkdir -p "target/template-$lang"
        cp -r "sdk/$lang/template/." "target/template-$lang/"
    done
    policies/build-other.sh target/template-python target/template-js
}

# `dist` (fat LTO) for the gateway people run; `release` for the tests,
# which `cargo test --release` then shares.
build_host() {
    local profile="${1:-dist}"
    log "building the weir host (profile $profile)"
    cargo build --profile "$profile" --locked -p weir
}

cmd="${1:-run}"
shift || true
case "$cmd" in
    policies)
        build_wasm
        ;;
    build)
        build_wasm
        build_host
        ;;
    run)
        build_wasm
        build_host
        log "starting weir: client API on 127.0.0.1:4000, admin on 127.0.0.1:4001"
        exec ./target/dist/weir serve "$@"
        ;;
    test)
        if ! python3 -c "import openai" 2>/dev/null; then
            log "installing the openai Python SDK (the SDK compatibility test drives weir with it)"
            python3 -m pip install --quiet --disable-pip-version-check openai
        fi
        if [ ! -f tests/sdk/node_modules/.package-lock.json ] ||
            [ tests/sdk/package-lock.json -nt tests/sdk/node_modules/.package-lock.json ]; then
            log "installing the openai JavaScript SDK (npm, into tests/sdk) for the same test"
            (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error >&2)
        fi
        if ! command -v redis-server >/dev/null; then
            log "installing redis-server (Debian package) for the multi-instance tests"
            sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
            $sudo apt-get install -y redis-server >/dev/null 2>&1 ||
                { $sudo apt-get update >/dev/null && $sudo apt-get install -y redis-server >/dev/null; }
        fi
        build_wasm with-test-guests
        build_templates
        build_host release
        log "running every test (release profile: shares the build above)"
        cargo test --release --locked --workspace
        ;;
    *)
        echo "usage: $0 run|test|build|policies" >&2
        exit 2
        ;;
esac
