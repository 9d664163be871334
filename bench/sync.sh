#!/usr/bin/env bash
# Fleet sync benchmark: 200 tags across 20 repositories (two platforms, ~100 KB
# layers, one base layer shared by all), cold and warm (a no-op re-sync):
#
#   mirrorfleet local mode   mirrorfleet-controller sync mirrors.yaml
#   mirrorfleet SQS path     controller run + worker consume, against moto
#   skopeo                   skopeo sync --all (blob-info cache emptied before each cold run)
#
#   bench/sync.sh            RUNS=3, REPOS=20, TAGS=10; the stack's plain registries
#   TLS=1 bench/sync.sh      the same between two TLS registries started here
#   TLS=1 API_HTTP=1.1 bench/sync.sh   ... with `api_http: "1.1"` (or "2") for both
#
# Every mirrorfleet command runs with default flags. With TLS=1 two
# distribution registries with the stack's certificate are started on
# MF_TLS_A_PORT and MF_TLS_B_PORT (5021, 5022; `bench_registry ... tls`), the
# fleet is copied up to the first once (not measured), and every tool then
# mirrors it from the first into the second, TLS verified against the test CA.
#
# Reported per tool and phase, medians of RUNS: wall time, client CPU
# (user+sys of the whole process tree), the two registries' CPU meanwhile,
# requests seen by the source and the destination registry (their access
# logs), and blobs written more than once into the same repository (PUT
# uploads and mounts per repository and digest). See measure_cmd in lib.sh.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPOS="${REPOS:-20}"
TAGS="${TAGS:-10}"
TLS="${TLS:-0}"
export AWS_ENDPOINT_URL="$MF_MOTO" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export MIRRORFLEET_PROGRESS=never MIRRORFLEET_LOG=warn
CERTS="$MIRRORFLEET_STACK_DIR/certs"

PREFIX="bench-fleet-$$"
echo "pushing $REPOS x $TAGS images into $MF_SRC ..." >&2
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo "$PREFIX/app" --fleet "${REPOS}x${TAGS}" --layer-kb 100 >"$WORK/images.txt"

# mirror_file NAME SRC DST: mirrors-NAME.yaml, every image to DST/NAME/<repo>:<tag>.
mirror_file() {
    local out="$WORK/mirrors-$1.yaml"
    {
        echo "mirrors:"
        while read -r repo tag _; do
            printf '  - source: %s/%s:%s\n    destinations: [%s/%s/%s:%s]\n' "$2" "$repo" "$tag" "$3" "$1" "$repo" "$tag"
        done <"$WORK/images.txt"
    } >"$out"
    echo "$out"
}

if [[ "$TLS" == 1 ]]; then
    SRC="127.0.0.1:${MF_TLS_A_PORT:-5021}"
    DST="127.0.0.1:${MF_TLS_B_PORT:-5022}"
    bench_registry a "$SRC" tls
    bench_registry b "$DST" tls
    export MEASURE_SRC=a MEASURE_DST=b
    api=""
    [[ -n "${API_HTTP:-}" ]] && api=", api_http: \"$API_HTTP\""
    cat >"$WORK/registries.yaml" <<EOF
registries:
  $MF_SRC: { plain_http: true }
  $SRC: { ca_file: $CERTS/ca.crt$api }
  $DST: { ca_file: $CERTS/ca.crt$api }
EOF
    export MIRRORFLEET_REGISTRIES="$WORK/registries.yaml"
    # The fleet, up to the TLS source once (its paths become seed/<repo>).
    echo "copying the fleet up to $SRC ..." >&2
    "$BIN/mirrorfleet-controller" sync "$(mirror_file seed "$MF_SRC" "$SRC")" >/dev/null
    sed -i 's|^|seed/|' "$WORK/images.txt"
    SKOPEO_SRC_TLS="cert-dir: $CERTS/skopeo"
    SKOPEO_DST_TLS=(--dest-cert-dir "$CERTS/skopeo")
    CHECK_AT="https://$DST"
else
    SRC="$MF_SRC" DST="$MF_DST"
    export MIRRORFLEET_PLAIN_HTTP="$SRC,$DST"
    SKOPEO_SRC_TLS="tls-verify: false"
    SKOPEO_DST_TLS=(--dest-tls-verify=false)
    CHECK_AT="$DST"
fi

# skopeo's sync source file: every repository with its tags.
python3 - "$WORK/images.txt" "$SRC" "$SKOPEO_SRC_TLS" >"$WORK/skopeo-sync.yaml" <<'PY'
import sys, collections
repos = collections.defaultdict(list)
for line in open(sys.argv[1]):
    repo, tag, _ = line.split()
    repos[repo].append(tag)
print(f"{sys.argv[2]}:\n  {sys.argv[3]}\n  images:")
for repo, tags in repos.items():
    print(f"    {repo}: [{', '.join(tags)}]")
PY

: >"$WORK/measured.jsonl"
for i in $(seq 1 "$RUNS"); do
    echo "run $i/$RUNS" >&2
    # mirrorfleet, local mode, default flags (images at once adapt).
    file=$(mirror_file "mf-local-$i" "$SRC" "$DST")
    measure_cmd "local/cold" "$BIN/mirrorfleet-controller" sync "$file"
    measure_cmd "local/warm" "$BIN/mirrorfleet-controller" sync "$file"

    # mirrorfleet, SQS path against moto
    table="mf-bench-$$-$i"
    queue=$("${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}/bin/python" -c \
        "import boto3, sys; print(boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1').create_queue(QueueName=sys.argv[2])['QueueUrl'])" \
        "$MF_MOTO" "$table")
    export MIRRORFLEET_TABLE="$table" MIRRORFLEET_QUEUE_URL="$queue"
    "$BIN/mirrorfleet-controller" table create >/dev/null
    "$BIN/mirrorfleet-controller" table import "$(mirror_file "mf-sqs-$i" "$SRC" "$DST")" >/dev/null
    measure_cmd "sqs/cold" bash -c "'$BIN/mirrorfleet-controller' run && '$BIN/mirrorfleet-worker' consume --wait 1s --exit-when-idle 1s"
    measure_cmd "sqs/warm" "$BIN/mirrorfleet-controller" run

    # skopeo sync
    rm -f "$SKOPEO_CACHE"
    skopeo_sync=(skopeo sync --all --src yaml --dest docker "${SKOPEO_DST_TLS[@]}" "$WORK/skopeo-sync.yaml" "$DST/sk-$i")
    measure_cmd "skopeo/cold" "${skopeo_sync[@]}"
    measure_cmd "skopeo/warm" "${skopeo_sync[@]}"

    # Digest identity of every mirrored image, both mirrorfleet paths.
    for d in "mf-local-$i" "mf-sqs-$i"; do
        check_digests "$WORK/images.txt" "$CHECK_AT" "$d" >/dev/null
    done
done

where="plain HTTP"
[[ "$TLS" == 1 ]] && where="TLS${API_HTTP:+, api_http $API_HTTP}"
python3 - "$WORK/measured.jsonl" "$(wc -l <"$WORK/images.txt")" "$TLS" "$where" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    rows.setdefault(m["name"], []).append(m)
med = lambda name, key: statistics.median(m[key] for m in rows[name])
runs = len(next(iter(rows.values())))
print(f"{sys.argv[2]} images, {sys.argv[4]}, medians of {runs} runs")
keys = [("wall", "wall s", 2), ("cpu", "cpu s", 2), ("registries_cpu", "registries' CPU s", 2), ("src_reqs", "src reqs", 0),
        ("dst_reqs", "dst reqs", 0), ("blobs_x2", "blobs x2", 0), ("src_manifest_heads", "src manifest HEADs", 0)]
print("| tool/phase | " + " | ".join(k[1] for k in keys) + " |")
print("| --- |" + " --- |" * len(keys))
for name in rows:
    print(f"| {name} | " + " | ".join(f"{med(name, k):.{p}f}" for k, _, p in keys) + " |")
for phase in ("cold", "warm"):
    for tool in ("local", "sqs"):
        a, b = f"skopeo/{phase}", f"{tool}/{phase}"
        print(f"{phase}, {tool}: {med(a, 'wall') / med(b, 'wall'):.1f}x faster than skopeo, "
              f"{med(b, 'src_reqs') / med(a, 'src_reqs'):.2f}x its source requests, "
              f"registries' CPU {med(b, 'registries_cpu'):.1f} s against {med(a, 'registries_cpu'):.1f} s")
PY
