# Sourced by the bench scripts.

# Install a Debian package if its command is missing, or exit saying why.
#   need_debian COMMAND PACKAGE WHY
need_debian() {
    command -v "$1" >/dev/null && return
    echo "installing $2 (Debian package) $3" >&2
    (apt-get install -y "$2" >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y "$2" >/dev/null)) ||
        { echo "cannot install $2; run as root or install it" >&2; exit 1; }
}

# The gateway as `./dev.sh run` builds it (profile `dist`), the mock
# upstream and weir-load, and every policy.
build_all() {
    cargo build --profile dist --locked -p weir >&2
    cargo build --profile dist --locked -p weir --example floor >&2
    cargo build --release --locked -p weir-testkit --bins >&2
    ./dev.sh policies >&2
}
