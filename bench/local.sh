#!/usr/bin/env bash
# Local mode at scale: ROWS single-image rows (default 10000) in a mirror
# file, every one already in sync (one two-platform image tagged ROWS times
# at both registries, as bench/scale.sh does), synced twice on a new state
# file:
#
#   first   `sync mirrors.yaml`: HEADs every source and destination and
#           records ROWS in-sync statuses in mirrors.yaml.state.db
#   second  the same again: in sync and recorded, so it writes nothing
#
#   bench/local.sh               (ROWS=10000; starts the local stack if needed)
#
# Reported per run: wall s, client CPU s (user+sys), peak RSS, bytes written
# to disk (write_bytes of /proc/PID/io: what reached the page cache to be
# written, the sync's state file and its log; a file's page dirtied twice
# before writeback counts once) and bytes handed to write() (wchar: the state
# file, the status table on stdout and the HTTP requests), and the state
# file's size after the run. Targets (issue 16): the first run within 2x the
# second, < 100 MB written.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS="${ROWS:-10000}"
export MIRRORFLEET_PLAIN_HTTP="$MF_SRC,$MF_DST" MIRRORFLEET_PROGRESS=never MIRRORFLEET_LOG=warn

REPO="bench-local-$$/app"
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo "$REPO" --fleet 1x1 --layer-kb 100 >"$WORK/images.txt"
read -r repo tag _ <"$WORK/images.txt"
"$BIN/mirrorfleet-worker" copy "$MF_SRC/$repo:$tag" "$MF_DST/$repo:$tag" >/dev/null
echo "tagging $ROWS tags at both ends ..." >&2
tag_both "$repo" "$tag" "$ROWS"

python3 - "$MF_SRC" "$MF_DST" "$repo" "$ROWS" >"$WORK/mirrors.yaml" <<'PY'
import sys
src, dst, repo, rows = sys.argv[1:]
print("mirrors:")
for i in range(int(rows)):
    print(f"  - source: {src}/{repo}:s{i}\n    destinations: [{dst}/{repo}:s{i}]")
PY

# measure NAME: run `sync` on the mirror file; one JSON line of figures.
measure() {
    python3 - "$1" "$WORK" "$BIN/mirrorfleet-controller" sync "$WORK/mirrors.yaml" <<'PY' >>"$WORK/local.jsonl"
import json, os, subprocess, sys, time
name, work, *cmd = sys.argv[1:]
def io():
    # This process's counters include the children it has reaped.
    return {k: int(v) for k, v in (l.split(":") for l in open("/proc/self/io"))}
before, t = io(), time.monotonic()
with open(f"{work}/{name}.out", "w") as out, open(f"{work}/{name}.err", "w") as err:
    p = subprocess.Popen(cmd, stdout=out, stderr=err)
    _, status, ru = os.wait4(p.pid, 0)
wall, after = time.monotonic() - t, io()
code = os.waitstatus_to_exitcode(status)
if code != 0:
    sys.exit(f"{name}: exit {code}: {open(f'{work}/{name}.err').read()[-2000:]}")
db = f"{work}/mirrors.yaml.state.db"
print(json.dumps({
    "name": name, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024,
    "write_bytes": after["write_bytes"] - before["write_bytes"], "wchar": after["wchar"] - before["wchar"],
    "db": sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p)),
    "synced": open(f"{work}/{name}.out").read().count(" synced "),
}))
PY
}
sync
measure first
sync
measure second

python3 - "$WORK/local.jsonl" "$ROWS" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
rows = int(sys.argv[2])
for r in runs:
    assert r["synced"] == rows, f"{r['name']}: {r['synced']} of {rows} rows synced"
mb = lambda b: f"{b / 1e6:.1f}"
print(f"{rows} in-sync rows, `sync mirrors.yaml` (default flags), new state file")
print("| run | wall s | CPU s | peak RSS MiB | written to disk MB | write() MB | state file MB |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in runs:
    print(f"| {r['name']} | {r['wall']:.1f} | {r['cpu']:.2f} | {r['rss_mib']:.1f} | {mb(r['write_bytes'])} | {mb(r['wchar'])} | {mb(r['db'])} |")
first, second = runs
print(f"first / second wall: {first['wall'] / second['wall']:.2f}x (target <= 2x); "
      f"first run wrote {mb(first['write_bytes'])} MB to disk, {mb(first['wchar'])} MB through write() (target < 100 MB)")
PY
