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
# Registries a benchmark started itself (bench_registry), stopped on exit.
BENCH_PIDS=()
stop_bench_registries() {
    local p
    for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    restore
}
trap stop_bench_registries EXIT

# bench_registry NAME ADDR KIND: start a distribution registry of the
# benchmark's own on ADDR, its config and data in WORK, and wait until it
# answers. KIND is `tls` (the stack's certificate, signed by its test CA;
# logs as the stack's registries) or `lean` (plain HTTP, warnings only and no
# access log: what a registry tuned for many small requests would run). Its
# pid is appended to BENCH_PIDS.
bench_registry() {
    local name="$1" addr="$2" kind="$3" scheme=http i
    local log="  level: info\n  formatter: text\n  accesslog:\n    disabled: false" tls=""
    if [[ "$kind" == tls ]]; then
        scheme=https
        tls="  tls:\n    certificate: $MIRRORFLEET_STACK_DIR/certs/server.crt\n    key: $MIRRORFLEET_STACK_DIR/certs/server.key"
    else
        log="  level: warn\n  formatter: text\n  accesslog:\n    disabled: true"
    fi
    mkdir -p "$WORK/$name/data"
    printf 'version: 0.1\nlog:\n%b\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n  secret: mirrorfleet-bench-%s\n%b\n' \
        "$log" "$WORK/$name/data" "$addr" "$name" "$tls" >"$WORK/$name/config.yml"
    docker-registry serve "$WORK/$name/config.yml" >"$WORK/$name.log" 2>&1 &
    BENCH_PIDS+=("$!")
    echo "$!" >"$WORK/$name.pid"
    for i in $(seq 1 100); do
        curl -fsS --cacert "$MIRRORFLEET_STACK_DIR/certs/ca.crt" -o /dev/null "$scheme://$addr/v2/" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "registry $name did not start; see $WORK/$name.log" >&2
    exit 1
}

scripts/stack.sh status >/dev/null 2>&1 || scripts/stack.sh up
eval "$(scripts/stack.sh env)"
cargo build --release --locked -q -p mirrorfleet-worker -p mirrorfleet-controller -p mirrorfleet-tests
BIN="$CARGO_TARGET_DIR/release"

# registry_log NAME / registry_pid NAME: the access log and the pid of a
# registry, one bench_registry started (in WORK) or else the stack's.
registry_log() { if [[ -f "$WORK/$1.pid" ]]; then echo "$WORK/$1.log"; else echo "$MIRRORFLEET_STACK_DIR/$1.log"; fi; }
registry_pid() { if [[ -f "$WORK/$1.pid" ]]; then cat "$WORK/$1.pid"; else cat "$MIRRORFLEET_STACK_DIR/pids/$1.pid"; fi; }

# cpu_ticks PID...: CPU clock ticks (user+sys) these processes have used so far.
cpu_ticks() {
    local total=0 p
    for p in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$total"
}

# measure_cmd NAME CMD...: run CMD under /usr/bin/time -v and append one JSON
# line to $WORK/measured.jsonl: wall s, cpu s (user+sys of the process tree),
# peak RSS MiB, the CPU s the source and destination registries used meanwhile
# (/proc/PID/stat), and from their access logs the requests CMD caused at the
# source ($MEASURE_SRC, default src) and the destination ($MEASURE_DST, default
# dst), the source's manifest HEADs, and blobs written (PUT or mounted) more
# than once into the same destination repository. A registry is named as
# bench_registry or the stack names it. Exits if CMD fails.
measure_cmd() {
    local name="$1" src dst s0 d0 r0 r1 pids
    src=$(registry_log "${MEASURE_SRC:-src}")
    dst=$(registry_log "${MEASURE_DST:-dst}")
    pids=("$(registry_pid "${MEASURE_SRC:-src}")" "$(registry_pid "${MEASURE_DST:-dst}")")
    shift
    s0=$(wc -l <"$src")
    d0=$(wc -l <"$dst")
    r0=$(cpu_ticks "${pids[@]}")
    /usr/bin/time -v "$@" >"$WORK/out.txt" 2>"$WORK/time.txt" || {
        echo "$name failed:" >&2
        tail -30 "$WORK/out.txt" "$WORK/time.txt" >&2
        exit 1
    }
    r1=$(cpu_ticks "${pids[@]}")
    sleep 0.2 # let the registries flush their access logs
    tail -n +"$((s0 + 1))" "$src" >"$WORK/src-slice.log"
    tail -n +"$((d0 + 1))" "$dst" >"$WORK/dst-slice.log"
    REGISTRIES_CPU=$(((r1 - r0) * 1000 / $(getconf CLK_TCK))) \
        python3 - "$name" "$WORK/time.txt" "$WORK/src-slice.log" "$WORK/dst-slice.log" >>"$WORK/measured.jsonl" <<'PY'
import collections, json, os, re, sys
name, timef, srcf, dstf = sys.argv[1:]
t = open(timef).read()
num = lambda label: float(re.search(re.escape(label) + r":\s*([0-9.]+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*(\S+)", t).group(1).split(":")
req = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/[0-9.]+" (\d{3})')
def requests(path):
    return [m.groups() for m in map(req.search, open(path, errors="replace")) if m]
src, dst = requests(srcf), requests(dstf)
writes = collections.Counter()
for method, path, status in dst:
    m = re.match(r"/v2/(.+)/blobs/uploads/[^?]*\?(.*)", path)
    if status != "201" or not m:
        continue
    q = dict(p.split("=", 1) for p in m.group(2).split("&") if "=" in p)
    digest = q.get("digest") or q.get("mount")
    if digest and (method == "PUT" or (method == "POST" and "mount" in q)):
        writes[(m.group(1), digest.replace("%3A", ":"))] += 1
print(json.dumps({
    "name": name,
    "wall": sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall))),
    "cpu": num("User time (seconds)") + num("System time (seconds)"),
    "registries_cpu": int(os.environ["REGISTRIES_CPU"]) / 1000,
    "rss_mib": num("Maximum resident set size (kbytes)") / 1024,
    "src_reqs": len(src),
    "dst_reqs": len(dst),
    "src_manifest_heads": sum(1 for m, p, _ in src if m == "HEAD" and "/manifests/" in p),
    "blobs_x2": sum(1 for c in writes.values() if c > 1),
}))
PY
}

# check_digests IMAGES REGISTRY PREFIX [USER:PASS]: every `repository tag
# digest` line of IMAGES (mirrorfleet-fixture's output) must be at
# REGISTRY/PREFIX/repository:tag with that digest (HEAD, Docker-Content-Digest).
# REGISTRY is host:port over plain HTTP, or https://host:port verified against
# the stack's test CA. Prints how many match; fails (status 1, first mismatch
# on stderr) if any does not.
check_digests() {
    local images="$1" registry="$2" prefix="$3" creds="${4:-}" n=0 bad=0 repo tag digest got
    local auth=(--cacert "$MF_TLS_CA")
    [[ -n "$creds" ]] && auth+=(-u "$creds")
    [[ "$registry" == https://* ]] || registry="http://$registry"
    while read -r repo tag digest; do
        got=$(curl -fsS -I "${auth[@]}" \
            -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
            "$registry/v2/$prefix/$repo/manifests/$tag" |
            tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p') || true
        if [[ "$got" == "$digest" ]]; then
            n=$((n + 1))
        elif ((bad++ == 0)); then
            echo "digest mismatch: $registry/$prefix/$repo:$tag has '${got:-nothing}', source $digest" >&2
        fi
    done <"$images"
    echo "$n"
    ((bad == 0))
}

# tag_both REPO TAG ROWS: tag REPO:TAG (an index, already at both registries)
# ROWS times more, as s0..s<ROWS-1>, at the source ($MF_SRC) and at the
# destination ($MF_DST): PUTs of the same manifest bytes, 8 at a time.
tag_both() {
    python3 - "$MF_SRC" "$MF_DST" "$1" "$2" "$3" <<'PY'
import concurrent.futures, http.client, sys, threading, time
src, dst, repo, tag, rows = sys.argv[1:]
rows = int(rows)
accept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"
local = threading.local()
def request(host, method, path, **kw):
    # One kept-alive connection per thread and host.
    conns = local.__dict__.setdefault("conns", {})
    if host not in conns:
        conns[host] = http.client.HTTPConnection(host, timeout=60)
    conns[host].request(method, path, **kw)
    r = conns[host].getresponse()
    return r, r.read()
r, body = request(src, "GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
assert r.status == 200, r.status
kind = r.headers["Content-Type"]
def put(args):
    host, i = args
    r, _ = request(host, "PUT", f"/v2/{repo}/manifests/s{i}", body=body, headers={"Content-Type": kind})
    assert r.status == 201, (r.status, host, i)
t = time.time()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(put, [(h, i) for h in (src, dst) for i in range(rows)]))
print(f"tags pushed: {2 * rows} in {time.time() - t:.1f} s", file=sys.stderr)
PY
}
