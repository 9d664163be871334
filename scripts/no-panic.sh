#!/usr/bin/env bash
# No panics in shipped code: every unwrap(), expect(, panic!, unreachable!,
# todo! or unimplemented! outside #[cfg(test)] modules (and their tests.rs
# files) must carry a comment
# (on its line or one of the four above) saying why it cannot fire.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bad=0
while IFS= read -r f; do
    awk -v f="$f" '
        /#\[cfg\(test\)\]/ { t = 1 }
        { window[NR % 5] = $0 }
        !t && /unwrap\(\)|expect\(|panic!|unreachable!|todo!|unimplemented!/ {
            ok = 0
            for (i = 0; i < 5; i++) if (window[i] ~ /\/\//) ok = 1
            if (!ok) { print f ":" NR ": " $0; bad = 1 }
        }
        END { exit bad }' "$f" || bad=1
done < <(find common/src controller/src worker/src -name '*.rs' ! -name tests.rs)
# A module's tests split into its own `tests.rs` are test code too, as long as
# the module declares that file only under #[cfg(test)].
while IFS= read -r f; do
    if ! grep -B1 -x 'mod tests;' "$(dirname "$f")/mod.rs" | grep -qx '#\[cfg(test)\]'; then
        echo "$f: not declared under #[cfg(test)] in $(dirname "$f")/mod.rs"
        bad=1
    fi
done < <(find common/src controller/src worker/src -name tests.rs)
if ((bad)); then
    echo "no-panic: the lines above can panic without a comment saying why they cannot" >&2
    exit 1
fi
echo "no-panic: every unwrap/expect/panic outside tests is justified in a comment"
