#!/usr/bin/env bash
# One image over TLS: mirrorfleet with blob bodies on HTTP/1.1 and on
# HTTP/2 (the `blob_http` registry setting), against `skopeo copy --all`
# (HTTP/1.1), between two TLS registries, in one run.
#
#   bench/tls.sh             (RUNS=3; IMAGES="multi big" by default)
#
# The two registries are started here (`bench_registry ... tls`:
# distribution 2.8, the stack's certificate signed by its own test CA,
# config files in the work directory) on MF_TLS_A_PORT and MF_TLS_B_PORT
# (5021, 5022), and stopped on exit. The
# images, as in copy.sh: `multi` (2 platforms x 5 x 30 MiB) and `big` (one
# 1 GiB layer), pushed into the plain source registry and copied up to the
# first TLS registry once (not measured). Every tool then copies from it into
# a fresh repository of the second. Reported, medians of RUNS: wall s, the
# client's CPU s and peak RSS (/usr/bin/time -v), and the two registries' CPU
# s during the copy (/proc/PID/stat). TLS is verified everywhere: the CA is
# given to mirrorfleet as `ca_file` and to skopeo as a cert directory.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
IMAGES="${IMAGES:-multi big}"
A="127.0.0.1:${MF_TLS_A_PORT:-5021}"
B="127.0.0.1:${MF_TLS_B_PORT:-5022}"
CERTS="$MIRRORFLEET_STACK_DIR/certs"

bench_registry a "$A" tls
bench_registry b "$B" tls

# registries.yaml for each blob HTTP version: both TLS registries trust the
# test CA; the plain source is for the one-off setup copy.
for v in 1.1 2; do
    cat >"$WORK/registries-$v.yaml" <<EOF
registries:
  $MF_SRC: { plain_http: true }
  $A: { ca_file: $CERTS/ca.crt, blob_http: "$v" }
  $B: { ca_file: $CERTS/ca.crt, blob_http: "$v" }
EOF
done

echo "pushing fixtures into $MF_SRC and up to $A ..." >&2
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo bench/multi --tag v1 --platforms 2 --layers 5 --layer-mb 30 >/dev/null
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo bench/big --tag v1 --platforms 1 --layers 1 --layer-mb 1024 >/dev/null
for image in $IMAGES; do
    "$BIN/mirrorfleet-worker" copy --registries "$WORK/registries-2.yaml" --progress never \
        "$MF_SRC/bench/$image:v1" "$A/bench/$image:v1" >/dev/null
done

TICKS=$(getconf CLK_TCK)

# measure NAME CMD...: one line "name wall cpu rss_kb registries_cpu".
measure() {
    local name="$1" r0 r1
    shift
    r0=$(cpu_ticks "${BENCH_PIDS[@]}")
    /usr/bin/time -v "$@" >"$WORK/out.txt" 2>"$WORK/time.txt" || {
        echo "$name failed:" >&2
        tail -20 "$WORK/time.txt" "$WORK/out.txt" >&2
        exit 1
    }
    r1=$(cpu_ticks "${BENCH_PIDS[@]}")
    python3 - "$name" "$WORK/time.txt" "$(((r1 - r0)))" "$TICKS" >>"$WORK/results.txt" <<'PY'
import re, sys
name, path, ticks, hz = sys.argv[1:]
t = open(path).read()
def num(label):
    return float(re.search(re.escape(label) + r":\s*([0-9.]+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*(\S+)", t).group(1).split(":")
secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall)))
print(name, f"{secs:.3f}", f"{num('User time (seconds)') + num('System time (seconds)'):.3f}",
      int(num("Maximum resident set size (kbytes)")), f"{int(ticks) / int(hz):.2f}")
PY
}

digest_at() { skopeo inspect --raw --cert-dir "$CERTS/skopeo" "docker://$1" | sha256sum | cut -d' ' -f1; }

: >"$WORK/results.txt"
for image in $IMAGES; do
    want=$(digest_at "$A/bench/$image:v1")
    for i in $(seq 1 "$RUNS"); do
        echo "run $i/$RUNS: $image" >&2
        for v in 1.1 2; do
            measure "$image/mirrorfleet-h$v" "$BIN/mirrorfleet-worker" copy --registries "$WORK/registries-$v.yaml" \
                --progress never "$A/bench/$image:v1" "$B/mf-h$v-$i/$image:v1"
            [[ "$(digest_at "$B/mf-h$v-$i/$image:v1")" == "$want" ]] || { echo "digest mismatch: $image h$v run $i" >&2; exit 1; }
        done
        rm -f "$SKOPEO_CACHE"
        measure "$image/skopeo" skopeo copy --all --quiet --src-cert-dir "$CERTS/skopeo" --dest-cert-dir "$CERTS/skopeo" \
            "docker://$A/bench/$image:v1" "docker://$B/sk-$i/$image:v1"
    done
done

python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, wall, cpu, rss, reg = line.split()
    rows.setdefault(name, []).append((float(wall), float(cpu), int(rss), float(reg)))
print("| image/tool | runs | wall s | cpu s | peak RSS MiB | registries' CPU s |")
print("| --- | --- | --- | --- | --- | --- |")
for name, v in rows.items():
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"| {name} | {len(v)} | {med(0):.2f} | {med(1):.2f} | {med(2) / 1024:.1f} | {med(3):.2f} |")
PY
