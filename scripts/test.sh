#!/usr/bin/env bash
# The project's one test command (README.md, .ci/run): lints, the local stack,
# every unit and integration test, then the stack is stopped again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mirrorfleet-target}"
VENV="${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}"
step() { printf '\n==> %s\n' "$*"; }

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
"$VENV/bin/hadolint" Dockerfile

step "local stack"
scripts/stack.sh up
trap 'scripts/stack.sh down' EXIT

step "build binaries (integration tests run them)"
cargo build --workspace --bins --locked

step "tests"
cargo test --workspace --locked --no-fail-fast
