#!/usr/bin/env bash
# The local test stack: moto (AWS control planes) and five CNCF distribution
# registries, all on 127.0.0.1. Used by the tests, the benchmarks and the
# README's quickstart.
#
#   scripts/stack.sh up       install what is missing, start everything, wait until ready
#   scripts/stack.sh down     stop only the processes this script started (recorded pids)
#   scripts/stack.sh status   show each component, its address and whether it answers
#   scripts/stack.sh env      print `export` lines for the tests (eval "$(scripts/stack.sh env)")
#
# Ports (override with the variables): moto 5000, src 5001, dst 5002,
# basic-auth 5003, token-auth 5004 (token server 5005), TLS 5006, and an
# "ECR" registry 5007 whose basic-auth login is what moto's ECR
# GetAuthorizationToken hands out (AWS / <account>-auth-token), so the ECR
# credential path runs for real against a local registry.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${MIRRORFLEET_STACK_DIR:-/tmp/mirrorfleet-stack}"
VENV="${MIRRORFLEET_VENV:-$HOME/.cache/mirrorfleet-venv}"

MOTO_PORT="${MF_MOTO_PORT:-5000}"
SRC_PORT="${MF_SRC_PORT:-5001}"
DST_PORT="${MF_DST_PORT:-5002}"
BASIC_PORT="${MF_BASIC_PORT:-5003}"
TOKEN_REG_PORT="${MF_TOKEN_REG_PORT:-5004}"
TOKEN_SRV_PORT="${MF_TOKEN_SRV_PORT:-5005}"
TLS_PORT="${MF_TLS_PORT:-5006}"
ECR_PORT="${MF_ECR_PORT:-5007}"

# Test-only credentials for the local registries; they guard nothing but loopback.
BASIC_USER="mirror"
BASIC_PASS="basic-secret-$(printf '%s' "$STACK_DIR" | sha256sum | cut -c1-12)"
TOKEN_USER="tokenuser"
TOKEN_PASS="token-secret-$(printf '%s' "$STACK_DIR" | sha256sum | cut -c13-24)"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [[ -f "$STACK_DIR/pids/$1.pid" ]] && kill -0 "$(cat "$STACK_DIR/pids/$1.pid")" 2>/dev/null; }

install_missing() {
    local pkgs=()
    command -v docker-registry >/dev/null || pkgs+=(docker-registry)
    command -v skopeo >/dev/null || pkgs+=(skopeo)
    command -v htpasswd >/dev/null || pkgs+=(apache2-utils)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v curl >/dev/null || pkgs+=(curl)
    [[ -x /usr/bin/time ]] || pkgs+=(time)
    if ((${#pkgs[@]})); then
        log "installing ${pkgs[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
    if [[ ! -x "$VENV/bin/moto_server" ]]; then
        log "installing moto[server] into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'moto[server]'
    fi
}

make_certs() {
    local d="$STACK_DIR/certs"
    [[ -f "$d/server.crt" && -f "$d/token.crt" ]] && return 0
    mkdir -p "$d"
    # A throwaway CA for the TLS registry: tests trust it explicitly via the
    # registry settings' `ca_file`, never by turning verification off.
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=mirrorfleet test CA" \
        -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 30 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
    # skopeo reads a directory of *.crt files for a registry's CA.
    mkdir -p "$d/skopeo" && cp "$d/ca.crt" "$d/skopeo/ca.crt"
    # The token server signs JWTs with this key; the registry trusts its certificate.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=mirrorfleet token issuer" -keyout "$d/token.key" -out "$d/token.crt" 2>/dev/null
}

registry_config() { # name port extra-yaml
    local name="$1" port="$2" extra="$3"
    mkdir -p "$STACK_DIR/$name/data"
    cat >"$STACK_DIR/$name/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $STACK_DIR/$name/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: mirrorfleet-local-$name
$extra
EOF
}

start_bg() { # name logfile cmd...
    local name="$1" logfile="$2"
    shift 2
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    echo $! >"$STACK_DIR/pids/$name.pid"
}

wait_http() { # name url
    local i
    for i in $(seq 1 100); do
        if curl -ks -o /dev/null --max-time 2 "$2"; then return 0; fi
        pid_alive "$1" || die "$1 exited during start; see $STACK_DIR/$1.log"
        sleep 0.2
    done
    die "$1 did not answer at $2 within 20s; see $STACK_DIR/$1.log"
}

start_component() { # name port url cmd...
    local name="$1" port="$2" url="$3"
    shift 3
    if pid_alive "$name"; then
        log "$name already running (pid $(cat "$STACK_DIR/pids/$name.pid"))"
        return 0
    fi
    port_busy "$port" && die "port $port (for $name) is taken by a process this script did not start; stop it or set MF_*_PORT"
    start_bg "$name" "$STACK_DIR/$name.log" "$@"
    wait_http "$name" "$url"
    log "$name up on 127.0.0.1:$port"
}

up() {
    install_missing
    mkdir -p "$STACK_DIR/pids"
    make_certs
    local c="$STACK_DIR/certs"

    registry_config src "$SRC_PORT" ""
    registry_config dst "$DST_PORT" ""
    mkdir -p "$STACK_DIR/basic"
    htpasswd -Bbn "$BASIC_USER" "$BASIC_PASS" >"$STACK_DIR/basic/htpasswd"
    registry_config basic "$BASIC_PORT" "auth:
  htpasswd:
    realm: mirrorfleet-basic
    path: $STACK_DIR/basic/htpasswd"
    registry_config token "$TOKEN_REG_PORT" "auth:
  token:
    realm: http://127.0.0.1:$TOKEN_SRV_PORT/token
    service: mirrorfleet-token-registry
    issuer: mirrorfleet-token-issuer
    rootcertbundle: $c/token.crt"
    mkdir -p "$STACK_DIR/ecr"
    htpasswd -Bbn AWS 123456789012-auth-token >"$STACK_DIR/ecr/htpasswd"
    registry_config ecr "$ECR_PORT" "auth:
  htpasswd:
    realm: mirrorfleet-ecr
    path: $STACK_DIR/ecr/htpasswd"
    registry_config tls "$TLS_PORT" "  tls:
    certificate: $c/server.crt
    key: $c/server.key"

    start_component moto "$MOTO_PORT" "http://127.0.0.1:$MOTO_PORT/moto-api/" \
        env MOTO_PORT="$MOTO_PORT" "$VENV/bin/python" "$ROOT/scripts/moto_server.py" 127.0.0.1 "$MOTO_PORT"
    # moto's Batch would try to run jobs in Docker otherwise.
    curl -fsS -X POST -H 'Content-Type: application/json' \
        -d '{"batch":{"use_docker":false}}' "http://127.0.0.1:$MOTO_PORT/moto-api/config" >/dev/null

    start_component tokensrv "$TOKEN_SRV_PORT" "http://127.0.0.1:$TOKEN_SRV_PORT/healthz" \
        env TOKEN_USER="$TOKEN_USER" TOKEN_PASS="$TOKEN_PASS" TOKEN_KEY="$c/token.key" TOKEN_CERT="$c/token.crt" \
        TOKEN_ISSUER=mirrorfleet-token-issuer TOKEN_SERVICE=mirrorfleet-token-registry \
        TOKEN_TTL="${MF_TOKEN_TTL:-300}" \
        "$VENV/bin/python" "$ROOT/scripts/token_server.py" "$TOKEN_SRV_PORT"

    local name port scheme
    for pair in src:$SRC_PORT:http dst:$DST_PORT:http basic:$BASIC_PORT:http token:$TOKEN_REG_PORT:http tls:$TLS_PORT:https ecr:$ECR_PORT:http; do
        IFS=: read -r name port scheme <<<"$pair"
        start_component "$name" "$port" "$scheme://127.0.0.1:$port/v2/" \
            docker-registry serve "$STACK_DIR/$name/config.yml"
    done
    env_lines >"$STACK_DIR/env"
    log "ready; eval \"\$($0 env)\" for the variables"
}

down() {
    [[ -d "$STACK_DIR/pids" ]] || { log "nothing recorded in $STACK_DIR"; return 0; }
    local f pid
    for f in "$STACK_DIR"/pids/*.pid; do
        [[ -e "$f" ]] || continue
        pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            log "stopped $(basename "$f" .pid) (pid $pid)"
        fi
        rm -f "$f"
    done
    # Registry data is throwaway; removing it keeps the next run independent.
    if [[ "${MF_KEEP_DATA:-0}" != 1 ]]; then
        rm -rf "$STACK_DIR"/{src,dst,basic,token,tls,ecr}/data
    fi
}

status() {
    local rc=0 name port scheme
    for pair in moto:$MOTO_PORT:http tokensrv:$TOKEN_SRV_PORT:http src:$SRC_PORT:http dst:$DST_PORT:http \
        basic:$BASIC_PORT:http token:$TOKEN_REG_PORT:http tls:$TLS_PORT:https ecr:$ECR_PORT:http; do
        IFS=: read -r name port scheme <<<"$pair"
        if pid_alive "$name"; then
            printf '%-9s %-26s pid %-7s up\n' "$name" "$scheme://127.0.0.1:$port" "$(cat "$STACK_DIR/pids/$name.pid")"
        else
            printf '%-9s %-26s %-11s down\n' "$name" "$scheme://127.0.0.1:$port" "-"
            rc=1
        fi
    done
    return $rc
}

env_lines() {
    cat <<EOF
export MIRRORFLEET_STACK_DIR='$STACK_DIR'
export MF_SRC='127.0.0.1:$SRC_PORT'
export MF_DST='127.0.0.1:$DST_PORT'
export MF_BASIC='127.0.0.1:$BASIC_PORT'
export MF_BASIC_CREDS='$BASIC_USER:$BASIC_PASS'
export MF_TOKEN='127.0.0.1:$TOKEN_REG_PORT'
export MF_TOKEN_CREDS='$TOKEN_USER:$TOKEN_PASS'
export MF_TLS='127.0.0.1:$TLS_PORT'
export MF_TLS_CA='$STACK_DIR/certs/ca.crt'
export MF_TLS_CERT_DIR='$STACK_DIR/certs/skopeo'
export MF_MOTO='http://127.0.0.1:$MOTO_PORT'
export MF_ECR='127.0.0.1:$ECR_PORT'
export MF_ECR_CREDS='AWS:123456789012-auth-token'
EOF
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
env) env_lines ;;
*)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
