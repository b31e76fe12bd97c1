#!/usr/bin/env bash
# Build every Rust policy under policies/ into a WebAssembly component and put
# each at target/policies/<folder-name>.wasm (SPEC §1).
#
#   policies/build.sh
#
# Needs only rustup and cargo: installs the wasm32-wasip2 target if missing,
# then builds all policy crates in one cargo invocation, sharing the
# workspace's target dir (and its already-compiled dependencies). For
# wasm32-wasip2 a cdylib already is a component, so there is no extra step.
# Safe to run again: cargo rebuilds only what changed, the copies are
# overwritten.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out_dir="$root/target/policies"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The [package] name in a Cargo.toml.
package_name() {
    awk '
        /^\[/ { in_package = ($0 == "[package]") }
        in_package && /^name *= *"/ { sub(/^name *= *"/, ""); sub(/".*/, ""); print; exit }
    ' "$1"
}

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    log "installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi

folders=()
packages=()
for manifest in policies/*/Cargo.toml; do
    [ -f "$manifest" ] || continue
    folders+=("$(basename "$(dirname "$manifest")")")
    packages+=("$(package_name "$manifest")")
done
if [ ${#packages[@]} -eq 0 ]; then
    echo "no Rust policies under policies/" >&2
    exit 1
fi

args=()
for package in "${packages[@]}"; do
    args+=(-p "$package")
done
log "building ${#packages[@]} policies for wasm32-wasip2: ${packages[*]}"
cargo build --release --locked --target wasm32-wasip2 "${args[@]}"

mkdir -p "$out_dir"
for i in "${!packages[@]}"; do
    artifact="$target_dir/wasm32-wasip2/release/${packages[$i]//-/_}.wasm"
    cp "$artifact" "$out_dir/${folders[$i]}.wasm"
done

log "components in ${out_dir#"$root"/}:"
for folder in "${folders[@]}"; do
    printf '    %-28s %9d bytes\n' "$folder.wasm" "$(wc -c < "$out_dir/$folder.wasm")" >&2
done
