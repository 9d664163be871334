# Shared setup for the benchmarks (sourced, not run): a work directory, an
# emptied skopeo blob-info cache, the local stack, and release binaries.
#
# skopeo remembers where it has seen blobs and mounts them from earlier
# copies; a cold comparison needs that cache empty before each skopeo run.
# The user's cache is set aside here and put back on exit.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mirrorfleet-target}"
RUNS="${RUNS:-3}"
WORK="$(mktemp -d)"
SKOPEO_CACHE=/var/lib/containers/cache/blob-info-cache-v1.boltdb
[[ "$(id -u)" == 0 ]] || SKOPEO_CACHE="$HOME/.local/share/containers/cache/blob-info-cache-v1.boltdb"
[[ -f "$SKOPEO_CACHE" ]] && mv "$SKOPEO_CACHE" "$WORK/skopeo-cache.saved"
restore() {
    rm -f "$SKOPEO_CACHE"
    [[ -f "$WORK/skopeo-cache.saved" ]] && mv "$WORK/skopeo-cache.saved" "$SKOPEO_CACHE"
    rm -rf "$WORK"
}
trap restore EXIT

scripts/stack.sh status >/dev/null 2>&1 || scripts/stack.sh up
eval "$(scripts/stack.sh env)"
cargo build --release --locked -q -p mirrorfleet-worker -p mirrorfleet-controller -p mirrorfleet-tests
BIN="$CARGO_TARGET_DIR/release"
