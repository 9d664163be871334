#!/usr/bin/env bash
# Copy benchmark: mirrorfleet vs `skopeo copy --all` vs a curl "ceiling", on the
# same images between the same two local registries, in one run.
#
#   bench/copy.sh            (starts the local stack if needed; RUNS=3 by default)
#
# Images: a ~300 MB two-platform image (2 x 5 x 30 MiB incompressible layers)
# and a single 1 GiB layer. Each tool copies into a fresh destination
# repository each run, so nothing is skipped. Reported: median wall time,
# median CPU time of the copying process (user+sys) and median peak RSS, from
# /usr/bin/time -v. skopeo runs with an empty blob-info cache each time, so it
# cannot mount blobs from the copies made before it. The ceiling streams each blob with curl from the source GET
# into the destination POST+PUT, 8 at a time (blobs only, no manifests).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "pushing fixtures into $MF_SRC ..." >&2
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo bench/multi --tag v1 --platforms 2 --layers 5 --layer-mb 30 >/dev/null
"$BIN/mirrorfleet-fixture" --registry "$MF_SRC" --repo bench/big --tag v1 --platforms 1 --layers 1 --layer-mb 1024 >/dev/null

# ceiling REPO DEST_REPO: every blob of every manifest under REPO:v1, curl GET | curl PUT.
ceiling() {
    local repo="$1" dest="$2" accept
    accept='application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json'
    curl -fsS -H "Accept: $accept" "http://$MF_SRC/v2/$repo/manifests/v1" >"$WORK/top.json"
    python3 - "$WORK/top.json" "$MF_SRC" "$repo" "$accept" >"$WORK/blobs.txt" <<'PY'
import json, sys, urllib.request
top, host, repo, accept = sys.argv[1:]
m = json.load(open(top))
manifests = [m]
for c in m.get("manifests", []):
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{c['digest']}", headers={"Accept": accept})
    manifests.append(json.load(urllib.request.urlopen(req)))
seen = set()
for x in manifests:
    for d in ([x["config"]] if "config" in x else []) + x.get("layers", []):
        if d["digest"] not in seen:
            seen.add(d["digest"]); print(d["digest"], d["size"])
PY
    export MF_SRC MF_DST repo dest
    # shellcheck disable=SC2016
    xargs -P 8 -L 1 bash -c '
        loc=$(curl -fsS -X POST -o /dev/null -D - "http://$MF_DST/v2/$dest/blobs/uploads/" | tr -d "\r" | sed -n "s/^[Ll]ocation: //p")
        case "$loc" in http*) ;; *) loc="http://$MF_DST$loc" ;; esac
        sep="?"; case "$loc" in *\?*) sep="&" ;; esac
        curl -fsS "http://$MF_SRC/v2/$repo/blobs/$0" |
            curl -fsS -X PUT -H "Content-Type: application/octet-stream" -H "Content-Length: $1" -T - "$loc${sep}digest=$0" -o /dev/null
    ' <"$WORK/blobs.txt"
}
export -f ceiling
export WORK

# measure NAME CMD...: run under /usr/bin/time -v, append "name wall cpu rss_kb".
measure() {
    local name="$1"
    shift
    /usr/bin/time -v "$@" >"$WORK/out.txt" 2>"$WORK/time.txt" || {
        echo "$name failed:" >&2
        tail -20 "$WORK/time.txt" "$WORK/out.txt" >&2
        exit 1
    }
    python3 - "$name" "$WORK/time.txt" >>"$WORK/results.txt" <<'PY'
import re, sys
name, path = sys.argv[1:]
t = open(path).read()
def num(label):
    return float(re.search(re.escape(label) + r":\s*([0-9.]+)", t).group(1))
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*(\S+)", t).group(1).split(":")
secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall)))
print(name, f"{secs:.3f}", f"{num('User time (seconds)') + num('System time (seconds)'):.3f}", int(num("Maximum resident set size (kbytes)")))
PY
}

: >"$WORK/results.txt"
for image in multi big; do
    for i in $(seq 1 "$RUNS"); do
        echo "run $i/$RUNS: $image" >&2
        measure "$image/mirrorfleet" "$BIN/mirrorfleet-worker" copy --plain-http "$MF_SRC,$MF_DST" --progress never \
            "$MF_SRC/bench/$image:v1" "$MF_DST/bench-mf-$i/$image:v1"
        rm -f "$SKOPEO_CACHE"
        measure "$image/skopeo" skopeo copy --all --quiet --src-tls-verify=false --dest-tls-verify=false \
            "docker://$MF_SRC/bench/$image:v1" "docker://$MF_DST/bench-sk-$i/$image:v1"
        measure "$image/ceiling" bash -c "ceiling bench/$image bench-curl-$i/$image"
        # Digest identity, checked by skopeo for the copies made here.
        want=$(skopeo inspect --raw --tls-verify=false "docker://$MF_SRC/bench/$image:v1" | sha256sum | cut -d' ' -f1)
        got=$(skopeo inspect --raw --tls-verify=false "docker://$MF_DST/bench-mf-$i/$image:v1" | sha256sum | cut -d' ' -f1)
        [[ "$want" == "$got" ]] || { echo "digest mismatch for $image run $i" >&2; exit 1; }
    done
done

python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, wall, cpu, rss = line.split()
    rows.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
print(f"{'image/tool':<22} {'runs':>4} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}")
for name, v in rows.items():
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"{name:<22} {len(v):>4} {med(0):>8.2f} {med(1):>8.2f} {med(2) / 1024:>13.1f}")
PY
