#!/usr/bin/env bash
# Controller scale benchmark: ROWS single-image rows (default 10000), every
# one already in sync, in a DynamoDB table (moto) with an SQS queue (moto);
# each row's source and destination are tags of one two-platform image on
# the stack's two registries.
#
#   bench/scale.sh                 (ROWS=10000; RUNS=3 no-op cycles; starts the local stack if needed)
#   ROWS=100000 RUNS=1 bench/scale.sh
#   LEAN=1 bench/scale.sh          (the images on two registries without access logs)
#
# Setup: the tags are pushed at both ends; the table is made by `table
# create`; one row goes through a real first cycle, which records its
# in-sync status and index entry, and the other rows are seeded straight
# into moto with that status and entry (BatchWriteItem), since moto writes
# ~60 items/s one at a time and a first cycle of 100k rows would take half
# an hour of moto.
#
# Reported per no-op cycle, default flags: wall s; rows/s counted from when
# the first planned row arrives (`first_row_seconds`, which includes the
# first page); client CPU; peak RSS; registry requests per row per side;
# DynamoDB requests, read units as the controller was told them
# (`ReturnConsumedCapacity`; moto reports a constant per call) and as
# DynamoDB's sizing rules charge the items scanned; write requests, SQS
# requests and jobs (all must be 0 but for one SQS depth check); the CPU the
# two registries and moto spent during the cycle; and moto's own share: a
# bare boto3 scan of the same table with the same 4 segments, timed alone
# just before. Then one push event against the same table (DynamoDB requests,
# no Scan), and the cost of one cycle at 100,000 rows by the arithmetic of
# docs/deploy.md.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS="${ROWS:-10000}"
PYTHON="${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}/bin/python"
export AWS_ENDPOINT_URL="$MF_MOTO" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
# LEAN=1: the rows' images on two registries of the benchmark's own that
# log warnings only and no access lines (`bench_registry ... lean`), to see
# the controller's own rate where the registries answer HEADs cheaply.
if [[ "${LEAN:-0}" == 1 ]]; then
    bench_registry lean-src "127.0.0.1:${MF_LEAN_SRC_PORT:-5031}" lean
    bench_registry lean-dst "127.0.0.1:${MF_LEAN_DST_PORT:-5032}" lean
    MF_SRC="127.0.0.1:${MF_LEAN_SRC_PORT:-5031}" MF_DST="127.0.0.1:${MF_LEAN_DST_PORT:-5032}"
    REGISTRY_PIDS=("${BENCH_PIDS[@]}")
else
    REGISTRY_PIDS=("$(cat "$MIRRORFLEET_STACK_DIR/pids/src.pid")" "$(cat "$MIRRORFLEET_STACK_DIR/pids/dst.pid")")
fi
MOTO_PID=$(cat "$MIRRORFLEET_STACK_DIR/pids/moto.pid")
export MIRRORFLEET_PLAIN_HTTP="$MF_SRC,$MF_DST" MIRRORFLEET_PROGRESS=never MIRRORFLEET_LOG=warn

REPO="bench-scale-$$/app"
TABLE="mf-scale-$$"
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo "$REPO" --fleet 1x1 --layer-kb 100 >"$WORK/images.txt"
read -r repo tag _ <"$WORK/images.txt"
"$BIN/mirrorfleet-worker" copy "$MF_SRC/$repo:$tag" "$MF_DST/$repo:$tag" >/dev/null

export MIRRORFLEET_TABLE="$TABLE"
"$BIN/mirrorfleet-controller" table create >/dev/null
QUEUE=$("$PYTHON" -c "import boto3,sys; print(boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1').create_queue(QueueName=sys.argv[2])['QueueUrl'])" "$MF_MOTO" "$TABLE")
export MIRRORFLEET_QUEUE_URL="$QUEUE"

echo "tagging $ROWS tags at both ends ..." >&2
tag_both "$repo" "$tag" "$ROWS"

# One row through a real first cycle: its status and index entry are the
# template for the others.
printf 'source,destinations\n%s/%s:s0,%s/%s:s0\n' "$MF_SRC" "$repo" "$MF_DST" "$repo" >"$WORK/one.csv"
"$BIN/mirrorfleet-controller" table import "$WORK/one.csv" >/dev/null
"$BIN/mirrorfleet-controller" run --output json >"$WORK/template-run.json"
echo "seeding $ROWS rows ..." >&2
"$PYTHON" - "$MF_MOTO" "$TABLE" "$MF_SRC" "$MF_DST" "$repo" "$ROWS" <<'PY'
import concurrent.futures, sys, time
import boto3
moto, table, src, dst, repo, rows = sys.argv[1:]
rows = int(rows)
ddb = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
template = ddb.get_item(TableName=table, Key={"source": {"S": f"{src}/{repo}:s0"}})["Item"]
status = template["status"]["M"][f"{dst}/{repo}:s0"]
assert status["M"]["state"]["S"] == "synced", template
def batch(lo):
    items = []
    for i in range(lo, min(lo + 25, rows)):
        item = dict(template)
        item["source"] = {"S": f"{src}/{repo}:s{i}"}
        item["destinations"] = {"L": [{"S": f"{dst}/{repo}:s{i}"}]}
        item["status"] = {"M": {f"{dst}/{repo}:s{i}": status}}
        items.append({"PutRequest": {"Item": item}})
    pending = {table: items}
    while pending:
        pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or None
t = time.time()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(batch, range(1, rows, 25)))
print(f"rows seeded: {rows} in {time.time() - t:.1f} s (moto, BatchWriteItem)", file=sys.stderr)
PY

# The table as DynamoDB would charge a scan of it: the items' sizes by
# DynamoDB's rules, a page (1 MB) at a time, rounded up to 4 KB per page;
# and moto's own scan time with the controller's 4 segments.
moto_scan() {
    "$PYTHON" - "$MF_MOTO" "$TABLE" <<'PY'
import concurrent.futures, sys, time
import boto3
moto, table = sys.argv[1:]
ddb = boto3.client("dynamodb", endpoint_url=moto, region_name="us-east-1")
def size(v):
    (kind, x), = v.items()
    if kind in ("S", "B"):
        return len(x.encode() if kind == "S" else x)
    if kind == "N":
        return (len(x.lstrip("-").replace(".", "")) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in x)
    if kind == "L":
        return 3 + sum(size(e) + 1 for e in x)
    if kind == "M":
        return 3 + sum(len(k.encode()) + size(e) + 1 for k, e in x.items())
    raise ValueError(kind)
def segment(n):
    items, units, start = 0, 0.0, None
    while True:
        kw = {"TableName": table, "Segment": n, "TotalSegments": 4}
        if start:
            kw["ExclusiveStartKey"] = start
        out = ddb.scan(**kw)
        page = sum(sum(len(k.encode()) + size(v) for k, v in item.items()) for item in out["Items"])
        # Eventually consistent: half a unit per 4 KB.
        units += -(-page // 4096) * 0.5
        items += len(out["Items"])
        start = out.get("LastEvaluatedKey")
        if not start:
            return items, units
t = time.time()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    parts = list(pool.map(segment, range(4)))
print(f"{time.time() - t:.2f} {sum(p[0] for p in parts)} {sum(p[1] for p in parts)}")
PY
}

# CPU seconds (user+sys) the stack's registries and moto have used so far.
stack_cpu() {
    local name pid
    for pid in "${REGISTRY_PIDS[@]}" "$MOTO_PID"; do
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f ", ($14 + $15) / hz }' "/proc/$pid/stat"
    done
    echo
}

: >"$WORK/measured.jsonl"
: >"$WORK/moto.jsonl"
for i in $(seq 1 "$RUNS"); do
    read -r scan_s scanned units < <(moto_scan)
    read -r src0 dst0 moto0 < <(stack_cpu)
    measure_cmd "no-op cycle $i" "$BIN/mirrorfleet-controller" run --output json
    read -r src1 dst1 moto1 < <(stack_cpu)
    cp "$WORK/out.txt" "$WORK/noop-$i.json"
    echo "{\"moto_scan\": $scan_s, \"scanned\": $scanned, \"scan_units\": $units, \"registry_cpu\": $(echo "$src1 - $src0 + $dst1 - $dst0" | bc), \"moto_cpu\": $(echo "$moto1 - $moto0" | bc)}" >>"$WORK/moto.jsonl"
done

# A push of one tag: the rows it concerns, found without a scan.
"$BIN/mirrorfleet-controller" run --registry-host "$MF_SRC" --repository "$repo" --tag s7 \
    --output json >"$WORK/event.json"

"$PYTHON" - "$WORK" "$ROWS" "$RUNS" "$MF_SRC" "$MF_DST" <<'PY'
import json, statistics, sys
work, rows, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src_host, dst_host = sys.argv[4], sys.argv[5]
m = [json.loads(l) for l in open(f"{work}/measured.jsonl")]
moto = [json.loads(l) for l in open(f"{work}/moto.jsonl")]
noops = [json.load(open(f"{work}/noop-{i}.json")) for i in range(1, runs + 1)]
event = json.load(open(f"{work}/event.json"))
assert all(n["rows_scanned"] == rows for n in noops), [n["rows_scanned"] for n in noops]
def ddb(n, op=None):
    return sum(v for k, v in n["aws"]["requests"].items()
               if k.startswith("dynamodb:") and (op is None or k == f"dynamodb:{op}"))
WRITES = ("UpdateItem", "PutItem", "BatchWriteItem", "DeleteItem")
# Registry requests as the controller counted them (its JSON report): the
# same whether or not the registries keep access logs (LEAN=1 does not).
def sent(n, host):
    return n["requests"]["registries"].get(host, {}).get("requests", 0)
print(f"{rows} in-sync single-image rows; moto 5.2.5 for DynamoDB and SQS; default flags")
head = ["cycle", "wall s", "rows/s", "rows/s after 1st row", "cpu s", "RSS MiB", "src req/row", "dst req/row",
        "DynamoDB req", "RCU (moto)", "RCU (sizing)", "writes", "SQS req", "jobs", "registries CPU s", "moto CPU s", "moto scan alone s"]
print("| " + " | ".join(head) + " |")
print("|" + " --- |" * len(head))
for x, n, s in zip(m, noops, moto):
    beyond = max(n["seconds"] - n["first_row_seconds"], 0.001)
    cells = [x["name"], f"{x['wall']:.1f}", f"{rows / x['wall']:.0f}", f"{rows / beyond:.0f}", f"{x['cpu']:.2f}",
             f"{x['rss_mib']:.1f}", f"{sent(n, src_host) / rows:.2f}", f"{sent(n, dst_host) / rows:.2f}", str(ddb(n)),
             f"{n['aws']['dynamodb_read_units']:.1f}", f"{s['scan_units']:.1f}", str(sum(ddb(n, w) for w in WRITES)),
             str(sum(v for k, v in n["aws"]["requests"].items() if k.startswith("sqs:"))), str(n["jobs_enqueued"]),
             f"{s['registry_cpu']:.1f}", f"{s['moto_cpu']:.1f}", f"{s['moto_scan']:.2f}"]
    print("| " + " | ".join(cells) + " |")
walls = [x["wall"] for x in m]
scans = [s["moto_scan"] for s in moto]
med, med_scan = statistics.median(walls), statistics.median(scans)
print(f"no-op median: {med:.1f} s = {rows / med:.0f} rows/s; moto's scan alone {med_scan:.1f} s "
      f"({rows / med_scan:.0f} rows/s: the ceiling moto sets); peak RSS {max(x['rss_mib'] for x in m):.1f} MiB")
ops = {k: v for k, v in event["aws"]["requests"].items() if k.startswith("dynamodb:")}
print(f"push event (one tag) at {rows} rows: {sum(ops.values())} DynamoDB requests {ops}, "
      f"rows planned {event['rows_scanned']}, {event['seconds']:.2f} s")
assert "dynamodb:Scan" not in ops, ops
# One cycle at 100,000 rows, per docs/deploy.md: the scan's read units as
# DynamoDB sizes them ($0.125 per million, on demand), SQS requests
# ($0.40 per million), ECR API calls (no charge), and the controller job's
# Fargate time (0.25 vCPU, 0.5 GB: $0.0123 per hour) at this cycle's pace.
scale = 100_000 / rows
rcu = statistics.median(s["scan_units"] for s in moto) * scale
sqs = statistics.median(sum(v for k, v in n["aws"]["requests"].items() if k.startswith("sqs:")) for n in noops)
hours = med * scale / 3600
cost = rcu * 0.125e-6 + sqs * 0.40e-6 + hours * 0.0123
print(f"one no-op cycle at 100,000 rows: {rcu:.0f} RCU x $0.125/M = ${rcu * 0.125e-6:.5f}; "
      f"{sqs} SQS requests = ${sqs * 0.40e-6:.6f}; 0 writes; controller {hours * 60:.1f} min x $0.0123/h = "
      f"${hours * 0.0123:.4f}; total ${cost:.4f}")
PY
