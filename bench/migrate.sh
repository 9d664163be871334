#!/usr/bin/env bash
# Registry migration benchmark: every repository under one namespace of the
# source registry (20 repositories x 10 tags, two platforms, ~100 KB layers,
# one base layer shared by all), cold and warm (a no-op re-run):
#
#   mirrorfleet        one registry-wide row (`source: SRC/<ns>/*`, a prefix
#                      destination) in a local-mode file: controller sync --workers 16
#   mirrorfleet/ecr    the same row to an ECR host name, mapped by a registry
#                      settings file to the stack's ECR-login registry (:5007),
#                      with moto answering ECR's control plane (repositories
#                      are created by mirrorfleet; ECR's default 10 manifest
#                      PUTs/s pacing applies, as it would against ECR)
#   skopeo             skopeo sync --all, one call per source repository (it
#                      takes one repository per call), the loop timed as a whole;
#                      blob-info cache emptied before each cold run
#
#   bench/migrate.sh         (RUNS=3 by default; starts the local stack if needed)
#
# Reported per tool and phase, medians of RUNS: wall time, client CPU
# (user+sys of the whole process tree), peak RSS, requests seen by the source
# and the destination registry (their access logs) and by moto, blobs written
# more than once into the same repository, and ECR repositories created.
# After each cold run every destination digest is checked against the
# source's: mirrorfleet must match all; skopeo's matches are counted.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPOS="${REPOS:-20}"
TAGS="${TAGS:-10}"
WORKERS="${WORKERS:-16}"
ECR_HOST=123456789012.dkr.ecr.us-east-1.amazonaws.com
PYTHON="${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}/bin/python"
export AWS_ENDPOINT_URL="$MF_MOTO" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export MIRRORFLEET_PROGRESS=never MIRRORFLEET_LOG=warn

NS="bench-migrate-$$"
echo "pushing $REPOS x $TAGS images into $MF_SRC/$NS/ ..." >&2
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo "$NS/app" --fleet "${REPOS}x${TAGS}" --layer-kb 100 >"$WORK/images.txt"
cut -d' ' -f1 "$WORK/images.txt" | sort -u >"$WORK/repos.txt"

cat >"$WORK/registries.yaml" <<EOF
registries:
  $ECR_HOST:
    endpoint: $MF_ECR
    plain_http: true
  $MF_SRC:
    plain_http: true
EOF

# row_file NAME DEST: a fresh directory (so a fresh state file) holding one
# registry-wide row, every repository under SRC/<ns>/ to the prefix DEST/.
row_file() {
    mkdir -p "$WORK/$1"
    printf 'mirrors:\n  - source: %s/%s/*\n    destinations: [%s/]\n' "$MF_SRC" "$NS" "$2" >"$WORK/$1/mirrors.yaml"
    echo "$WORK/$1/mirrors.yaml"
}

# ecr_repos PREFIX: how many repositories moto's ECR holds under PREFIX/.
ecr_repos() {
    "$PYTHON" - "$MF_MOTO" "$1/" <<'PY'
import sys, boto3
ecr = boto3.client("ecr", endpoint_url=sys.argv[1], region_name="us-east-1")
pages = ecr.get_paginator("describe_repositories").paginate()
print(sum(r["repositoryName"].startswith(sys.argv[2]) for p in pages for r in p["repositories"]))
PY
}

# run_measured NAME [ECR_PREFIX] CMD...: measure_cmd (bench/lib.sh), plus the
# requests moto saw and, with an ECR prefix, the ECR repositories created.
note() { echo "$1 $2 $3" >>"$WORK/notes.txt"; }
run_measured() {
    local name="$1" prefix="$2" m0 r0=0
    shift 2
    m0=$(wc -l <"$MIRRORFLEET_STACK_DIR/moto.log")
    [[ -n "$prefix" ]] && r0=$(ecr_repos "$prefix")
    measure_cmd "$name" "$@"
    note "$name" moto_reqs "$(tail -n +"$((m0 + 1))" "$MIRRORFLEET_STACK_DIR/moto.log" | grep -c '"[A-Z]* / HTTP' || true)"
    [[ -n "$prefix" ]] && note "$name" ecr_created "$(($(ecr_repos "$prefix") - r0))"
    return 0
}

: >"$WORK/measured.jsonl"
: >"$WORK/notes.txt"
for i in $(seq 1 "$RUNS"); do
    echo "run $i/$RUNS" >&2

    # mirrorfleet, local mode, plain destination registry.
    file=$(row_file "mf-$i" "$MF_DST/mf-$$-$i")
    sync=("$BIN/mirrorfleet-controller" sync --plain-http "$MF_SRC,$MF_DST" --workers "$WORKERS" "$file")
    run_measured mirrorfleet/cold "" "${sync[@]}"
    ok=$(check_digests "$WORK/images.txt" "$MF_DST" "mf-$$-$i")
    note mirrorfleet/cold digests_ok "$ok"
    run_measured mirrorfleet/warm "" "${sync[@]}"

    # mirrorfleet, the same row to an ECR host name (the stack's :5007 + moto).
    file=$(row_file "mfecr-$i" "$ECR_HOST/mfecr-$$-$i")
    sync=("$BIN/mirrorfleet-controller" sync --registries "$WORK/registries.yaml" --workers "$WORKERS" "$file")
    MEASURE_DST=ecr run_measured mirrorfleet-ecr/cold "mfecr-$$-$i" "${sync[@]}"
    ok=$(check_digests "$WORK/images.txt" "$MF_ECR" "mfecr-$$-$i" "$MF_ECR_CREDS")
    note mirrorfleet-ecr/cold digests_ok "$ok"
    MEASURE_DST=ecr run_measured mirrorfleet-ecr/warm "mfecr-$$-$i" "${sync[@]}"

    # skopeo sync, one call per repository; lands as sk-<pid>-<run>/<ns>/app-N like mirrorfleet.
    rm -f "$SKOPEO_CACHE"
    skopeo_loop=(bash -c 'set -euo pipefail; src="$1" dst="$2" repos="$3"; while read -r repo; do
        skopeo sync --all --src docker --dest docker --src-tls-verify=false --dest-tls-verify=false "$src/$repo" "$dst"
    done <"$repos"' skopeo-loop "$MF_SRC" "$MF_DST/sk-$$-$i/$NS" "$WORK/repos.txt")
    run_measured skopeo/cold "" "${skopeo_loop[@]}"
    # skopeo re-serialises these manifests (other digests): counted, not fatal.
    ok=$(check_digests "$WORK/images.txt" "$MF_DST" "sk-$$-$i" 2>/dev/null || true)
    note skopeo/cold digests_ok "$ok"
    run_measured skopeo/warm "" "${skopeo_loop[@]}"
done

python3 - "$WORK/measured.jsonl" "$WORK/notes.txt" "$(wc -l <"$WORK/images.txt")" "$(wc -l <"$WORK/repos.txt")" <<'PY'
import collections, json, statistics, sys
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    r = json.loads(line)
    for k, v in r.items():
        if k != "name":
            rows[r["name"]][k].append(v)
for line in open(sys.argv[2]):
    name, key, value = line.split()
    rows[name][key].append(float(value))
images, repos = int(sys.argv[3]), int(sys.argv[4])
runs = len(next(iter(rows.values()))["wall"])
med = lambda name, key: statistics.median(rows[name][key])
print(f"{images} images in {repos} repositories, medians of {runs} run(s)\n")
cols = [("wall s", "wall", 2), ("cpu s", "cpu", 2), ("peak RSS MiB", "rss_mib", 1), ("src reqs", "src_reqs", 0),
        ("dst reqs", "dst_reqs", 0), ("moto reqs", "moto_reqs", 0), ("blobs x2", "blobs_x2", 0),
        ("ECR repos created", "ecr_created", 0)]
print("| tool/phase | " + " | ".join(c[0] for c in cols) + " |")
print("| --- " * (len(cols) + 1) + "|")
for name in rows:
    cells = [f"{med(name, key):.{prec}f}" if rows[name][key] else "-" for _, key, prec in cols]
    print(f"| {name} | " + " | ".join(cells) + " |")
print()
for name in rows:
    if rows[name]["digests_ok"]:
        n = rows[name]["digests_ok"]
        print(f"{name}: {int(min(n))} of {images} destination digests equal the source's (fewest over {len(n)} run(s))")
for phase in ("cold", "warm"):
    sk = med(f"skopeo/{phase}", "wall")
    for tool in ("mirrorfleet", "mirrorfleet-ecr"):
        print(f"{phase}: skopeo / {tool} wall = {sk / med(f'{tool}/{phase}', 'wall'):.1f}x")
PY
