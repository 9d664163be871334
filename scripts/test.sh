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
scripts/no-panic.sh
"$VENV/bin/hadolint" Dockerfile
"$VENV/bin/cfn-lint" cloudformation/*.yaml
# --skip-download: no network; every suppression is in the template with its reason.
"$VENV/bin/checkov" --quiet --compact --skip-download -d cloudformation --framework cloudformation

step "advisories (offline RustSec snapshot)"
ADVISORY_DB="${MIRRORFLEET_ADVISORY_DB:-../shared/advisory-db}"
[[ -d "$ADVISORY_DB/crates" ]] || { echo "no RustSec snapshot at $ADVISORY_DB (set MIRRORFLEET_ADVISORY_DB)" >&2; exit 1; }
cargo audit --db "$ADVISORY_DB" --no-fetch --deny warnings

step "local stack"
scripts/stack.sh up
trap 'scripts/stack.sh down' EXIT

step "build binaries (integration tests run them)"
cargo build --workspace --bins --locked

step "tests"
log="$(mktemp)"
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

scripts/stack.sh down
trap - EXIT
# One closing line for the whole run (cargo's own last line is a doc-test
# summary that is often "0 passed"). A test binary that started but printed
# no "test result" line crashed, and a target that did not build never ran:
# each counts as a failure. Fewer tests than the floor means tests went
# missing (raise the floor as tests are added).
FLOOR=246
awk -v floor="$FLOOR" '
     /^test result:/ { results++; for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) ig += $i } }
     /^ *(Running|Doc-tests) / { started++ }
     /^error(\[E[0-9]+\])?: could not compile/ { broken++ }
     END {
         crashed = started - results; if (crashed < 0) crashed = 0
         f += crashed + broken
         printf "tests: %d passed, %d failed, %d skipped\n", p, f, ig
         if (crashed) printf "tests: %d test binaries ended without a result (crashed)\n", crashed
         if (broken) printf "tests: %d targets did not build\n", broken
         if (p < floor) { printf "tests: %d passed, fewer than the floor of %d: tests went missing\n", p, floor; exit 1 }
         exit (f > 0)
     }' "$log" || status=1
rm -f "$log"
exit "$status"
