#!/usr/bin/env bash
# Controller scale benchmark: ROWS single-image rows (default 10000), every
# one already in sync, in a DynamoDB table (moto) with an SQS queue (moto);
# each row's source and destination are tags of one two-platform image on
# the stack's two registries.
#
#   bench/scale.sh            (ROWS=10000; RUNS=3 no-op cycles; starts the local stack if needed)
#
# Reported: the setup (tags pushed, rows seeded straight into moto with
# boto3's batch writer), the first cycle (which records every row's in-sync
# status: ROWS writes), then per no-op cycle, with default flags:
#   wall s, client CPU s, peak RSS MiB, registry requests per row per side,
#   jobs enqueued (must be 0), and moto's own share: a bare boto3 scan of
#   the same table with the same 4 segments, timed alone just before.
# rows/s counts from when the first page arrives: wall minus moto's scan
# time is what the controller adds (an upper bound: the two overlap).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS="${ROWS:-10000}"
PYTHON="${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}/bin/python"
export AWS_ENDPOINT_URL="$MF_MOTO" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export MIRRORFLEET_PLAIN_HTTP="$MF_SRC,$MF_DST" MIRRORFLEET_PROGRESS=never MIRRORFLEET_LOG=warn

REPO="bench-scale-$$/app"
TABLE="mf-scale-$$"
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo "$REPO" --fleet 1x1 --layer-kb 100 >"$WORK/images.txt"
read -r repo tag _ <"$WORK/images.txt"
"$BIN/mirrorfleet-worker" copy "$MF_SRC/$repo:$tag" "$MF_DST/$repo:$tag" >/dev/null

echo "tagging $ROWS tags at both ends, seeding $ROWS rows ..." >&2
QUEUE=$("$PYTHON" - "$MF_SRC" "$MF_DST" "$repo" "$tag" "$ROWS" "$TABLE" "$MF_MOTO" <<'PY'
import concurrent.futures, sys, time
import boto3, requests
src, dst, repo, tag, rows, table, moto = sys.argv[1:]
rows = int(rows)
accept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"
r = requests.get(f"http://{src}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
r.raise_for_status()
body, kind = r.content, r.headers["Content-Type"]
session = requests.Session()
def put(args):
    host, i = args
    session.put(f"http://{host}/v2/{repo}/manifests/s{i}", data=body,
                headers={"Content-Type": kind}).raise_for_status()
t = time.time()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(put, [(h, i) for h in (src, dst) for i in range(rows)]))
print(f"tags pushed: {2 * rows} in {time.time() - t:.1f} s", file=sys.stderr)
kw = dict(endpoint_url=moto, region_name="us-east-1")
ddb = boto3.resource("dynamodb", **kw)
ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                 KeySchema=[{"AttributeName": "source", "KeyType": "HASH"}],
                 AttributeDefinitions=[{"AttributeName": "source", "AttributeType": "S"}])
t = time.time()
with ddb.Table(table).batch_writer() as w:
    for i in range(rows):
        w.put_item(Item={"source": f"{src}/{repo}:s{i}", "destinations": [f"{dst}/{repo}:s{i}"], "enabled": True})
print(f"rows seeded: {rows} in {time.time() - t:.1f} s (moto, BatchWriteItem)", file=sys.stderr)
print(boto3.client("sqs", **kw).create_queue(QueueName=table)["QueueUrl"])
PY
)
export MIRRORFLEET_TABLE="$TABLE" MIRRORFLEET_QUEUE_URL="$QUEUE"

moto_scan() {
    "$PYTHON" - "$MF_MOTO" "$TABLE" <<'PY'
import concurrent.futures, sys, time
import boto3
moto, table = sys.argv[1:]
ddb = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
def segment(n):
    items, start = 0, None
    while True:
        kw = {"TableName": table, "Segment": n, "TotalSegments": 4}
        if start:
            kw["ExclusiveStartKey"] = start
        out = ddb.scan(**kw)
        items += len(out["Items"])
        start = out.get("LastEvaluatedKey")
        if not start:
            return items
t = time.time()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    n = sum(pool.map(segment, range(4)))
print(f"{time.time() - t:.2f} {n}")
PY
}

: >"$WORK/measured.jsonl"
measure_cmd "first cycle (records $ROWS in-sync statuses)" "$BIN/mirrorfleet-controller" run --output json
cp "$WORK/out.txt" "$WORK/first.json"
for i in $(seq 1 "$RUNS"); do
    read -r scan_s scanned < <(moto_scan)
    echo "{\"moto_scan\": $scan_s, \"scanned\": $scanned}" >>"$WORK/moto.jsonl"
    measure_cmd "no-op cycle $i" "$BIN/mirrorfleet-controller" run --output json
    cp "$WORK/out.txt" "$WORK/noop-$i.json"
done

"$PYTHON" - "$WORK" "$ROWS" "$RUNS" <<'PY'
import json, statistics, sys
work, rows, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = [json.loads(l) for l in open(f"{work}/measured.jsonl")]
moto = [json.loads(l) for l in open(f"{work}/moto.jsonl")]
first = json.load(open(f"{work}/first.json"))
noops = [json.load(open(f"{work}/noop-{i}.json")) for i in range(1, runs + 1)]
assert all(n["rows_scanned"] == rows for n in noops), noops
print(f"{rows} in-sync single-image rows; moto 5.2.5 for DynamoDB and SQS; defaults")
print(f"{'cycle':<48} {'wall s':>7} {'rows/s':>7} {'cpu s':>6} {'RSS MiB':>8} {'src req/row':>11} {'dst req/row':>11} {'jobs':>5} {'moto scan s':>11}")
print(f"{m[0]['name']:<48} {m[0]['wall']:>7.1f} {rows / m[0]['wall']:>7.0f} {m[0]['cpu']:>6.2f} {m[0]['rss_mib']:>8.1f} {m[0]['src_reqs'] / rows:>11.2f} {m[0]['dst_reqs'] / rows:>11.2f} {first['jobs_enqueued']:>5} {'-':>11}")
for x, n, s in zip(m[1:], noops, moto):
    print(f"{x['name']:<48} {x['wall']:>7.1f} {rows / x['wall']:>7.0f} {x['cpu']:>6.2f} {x['rss_mib']:>8.1f} {x['src_reqs'] / rows:>11.2f} {x['dst_reqs'] / rows:>11.2f} {n['jobs_enqueued']:>5} {s['moto_scan']:>11.2f}")
walls = [x["wall"] for x in m[1:]]
scans = [s["moto_scan"] for s in moto]
med, med_scan = statistics.median(walls), statistics.median(scans)
print(f"no-op median: {med:.1f} s = {rows / med:.0f} rows/s; moto's scan alone {med_scan:.1f} s; "
      f"the controller beyond moto's scan: {max(med - med_scan, 0.001):.1f} s "
      f"= {rows / max(med - med_scan, 0.001):.0f} rows/s")
PY
