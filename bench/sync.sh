#!/usr/bin/env bash
# Fleet sync benchmark: 200 tags across 20 repositories (two platforms, ~100 KB
# layers, one base layer shared by all), cold and warm (a no-op re-sync):
#
#   mirrorfleet local mode   mirrorfleet-controller sync mirrors.yaml
#   mirrorfleet SQS path     controller run + worker consume, against moto
#   skopeo                   skopeo sync --all (blob-info cache emptied before each cold run)
#
#   bench/sync.sh            (RUNS=3 by default; starts the local stack if needed)
#
# Reported per tool and phase, medians of RUNS: wall time, client CPU
# (user+sys of the whole process tree), requests seen by the source and the
# destination registry (their access logs), and blobs written more than once
# into the same repository (PUT uploads and mounts per repository and digest).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPOS="${REPOS:-20}"
TAGS="${TAGS:-10}"
export AWS_ENDPOINT_URL="$MF_MOTO" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export MIRRORFLEET_PLAIN_HTTP="$MF_SRC,$MF_DST" MIRRORFLEET_PROGRESS=never MIRRORFLEET_LOG=warn

PREFIX="bench-fleet-$$"
echo "pushing $REPOS x $TAGS images into $MF_SRC ..." >&2
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo "$PREFIX/app" --fleet "${REPOS}x${TAGS}" --layer-kb 100 >"$WORK/images.txt"

# mirrors-<dest prefix>.yaml: every image to DST/<prefix>/<repo>:<tag>.
mirror_file() {
    local out="$WORK/mirrors-$1.yaml"
    {
        echo "mirrors:"
        while read -r repo tag _; do
            printf '  - source: %s/%s:%s\n    destinations: [%s/%s/%s:%s]\n' "$MF_SRC" "$repo" "$tag" "$MF_DST" "$1" "$repo" "$tag"
        done <"$WORK/images.txt"
    } >"$out"
    echo "$out"
}

# skopeo's sync source file: every repository with its tags.
python3 - "$WORK/images.txt" "$MF_SRC" >"$WORK/skopeo-sync.yaml" <<'PY'
import sys, collections
repos = collections.defaultdict(list)
for line in open(sys.argv[1]):
    repo, tag, _ = line.split()
    repos[repo].append(tag)
print(f"{sys.argv[2]}:\n  tls-verify: false\n  images:")
for repo, tags in repos.items():
    print(f"    {repo}: [{', '.join(tags)}]")
PY

lines() { wc -l <"$MIRRORFLEET_STACK_DIR/$1.log"; }

# measure NAME CMD...: time it, and count the registry requests it caused.
measure() {
    local name="$1" s0 d0
    shift
    s0=$(lines src)
    d0=$(lines dst)
    /usr/bin/time -v "$@" >"$WORK/out.txt" 2>"$WORK/time.txt" || {
        echo "$name failed:" >&2
        tail -30 "$WORK/out.txt" "$WORK/time.txt" >&2
        exit 1
    }
    sleep 0.2 # let the registries flush their access logs
    tail -n +"$((s0 + 1))" "$MIRRORFLEET_STACK_DIR/src.log" >"$WORK/src-slice.log"
    tail -n +"$((d0 + 1))" "$MIRRORFLEET_STACK_DIR/dst.log" >"$WORK/dst-slice.log"
    python3 - "$name" "$WORK/time.txt" "$WORK/src-slice.log" "$WORK/dst-slice.log" >>"$WORK/results.txt" <<'PY'
import collections, re, sys
name, timef, srcf, dstf = sys.argv[1:]
t = open(timef).read()
num = lambda label: float(re.search(re.escape(label) + r":\s*([0-9.]+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*(\S+)", t).group(1).split(":")
secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall)))
req = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/1\.1" (\d{3})')
def requests(path):
    return [m.groups() for m in map(req.search, open(path, errors="replace")) if m]
src, dst = requests(srcf), requests(dstf)
writes = collections.Counter()
for method, path, status in dst:
    if status != "201":
        continue
    m = re.match(r"/v2/(.+)/blobs/uploads/[^?]*\?(.*)", path)
    if not m:
        continue
    q = dict(p.split("=", 1) for p in m.group(2).split("&") if "=" in p)
    digest = q.get("digest") or q.get("mount")
    if digest and (method == "PUT" or (method == "POST" and "mount" in q)):
        writes[(m.group(1), digest.replace("%3A", ":"))] += 1
twice = sum(1 for c in writes.values() if c > 1)
src_heads = sum(1 for m, p, _ in src if m == "HEAD" and "/manifests/" in p)
print(name, f"{secs:.3f}", f"{num('User time (seconds)') + num('System time (seconds)'):.3f}", len(src), len(dst), twice, src_heads)
PY
}

: >"$WORK/results.txt"
for i in $(seq 1 "$RUNS"); do
    echo "run $i/$RUNS" >&2
    # mirrorfleet, local mode
    file=$(mirror_file "mf-local-$i")
    # Default flags: images at once adapt (no --workers).
    measure "local/cold" "$BIN/mirrorfleet-controller" sync "$file"
    measure "local/warm" "$BIN/mirrorfleet-controller" sync "$file"

    # mirrorfleet, SQS path against moto
    table="mf-bench-$$-$i"
    queue=$("${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}/bin/python" -c \
        "import boto3, sys; print(boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1').create_queue(QueueName=sys.argv[2])['QueueUrl'])" \
        "$MF_MOTO" "$table")
    export MIRRORFLEET_TABLE="$table" MIRRORFLEET_QUEUE_URL="$queue"
    "$BIN/mirrorfleet-controller" table create >/dev/null
    "$BIN/mirrorfleet-controller" table import "$(mirror_file "mf-sqs-$i")" >/dev/null
    measure "sqs/cold" bash -c "'$BIN/mirrorfleet-controller' run && '$BIN/mirrorfleet-worker' consume --wait 1s --exit-when-idle 1s"
    measure "sqs/warm" "$BIN/mirrorfleet-controller" run

    # skopeo sync
    rm -f "$SKOPEO_CACHE"
    measure "skopeo/cold" skopeo sync --all --src yaml --dest docker --dest-tls-verify=false "$WORK/skopeo-sync.yaml" "$MF_DST/sk-$i"
    measure "skopeo/warm" skopeo sync --all --src yaml --dest docker --dest-tls-verify=false "$WORK/skopeo-sync.yaml" "$MF_DST/sk-$i"

    # Digest identity of every mirrored image, both mirrorfleet paths.
    while read -r repo tag digest; do
        for d in "mf-local-$i" "mf-sqs-$i"; do
            got=$(curl -fsS -I -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$MF_DST/v2/$d/$repo/manifests/$tag" |
                tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
            [[ "$got" == "$digest" ]] || { echo "digest mismatch: $d/$repo:$tag" >&2; exit 1; }
        done
    done <"$WORK/images.txt"
done

python3 - "$WORK/results.txt" "$(wc -l <"$WORK/images.txt")" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *vals = line.split()
    rows.setdefault(name, []).append([float(v) for v in vals])
print(f"{sys.argv[2]} images, medians of {len(next(iter(rows.values())))} runs")
print(f"{'tool/phase':<13} {'wall s':>8} {'cpu s':>7} {'src reqs':>9} {'dst reqs':>9} {'blobs x2':>9} {'src manifest HEADs':>19}")
for name, v in rows.items():
    med = [statistics.median(x[i] for x in v) for i in range(6)]
    print(f"{name:<13} {med[0]:>8.2f} {med[1]:>7.2f} {med[2]:>9.0f} {med[3]:>9.0f} {med[4]:>9.0f} {med[5]:>19.0f}")
for phase in ("cold", "warm"):
    sk = statistics.median(x[0] for x in rows[f"skopeo/{phase}"])
    for tool in ("local", "sqs"):
        mf = statistics.median(x[0] for x in rows[f"{tool}/{phase}"])
        print(f"{phase}: skopeo / mirrorfleet {tool} = {sk / mf:.1f}x")
PY
