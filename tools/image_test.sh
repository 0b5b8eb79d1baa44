#!/usr/bin/env bash
# `make image-test`: builds the Dockerfile with podman and checks the image and the compose stack.
#
# Made for a Debian 12 machine run as root with no container registry and no Docker engine (CI's):
#  - installs podman, runc, mmdebstrap (and what rootful podman needs) from Debian when missing;
#  - sets podman up with what this sandbox needs, in a containers.conf of its own (CONTAINERS_CONF,
#    nothing system-wide): runtime runc (crun refuses the sandbox's cgroup layout) and explicit
#    ulimits (the defaults exceed the sandbox's); builds use --format docker (OCI drops HEALTHCHECK)
#    and get the host's CA bundle mounted (TLS is intercepted; pip must trust it);
#  - makes stand-ins for the two base images when they are missing, since none can be pulled:
#    `python:3.11-slim` (Debian minbase + python3, pip, venv, by mmdebstrap, `podman import`) and
#    `postgres:15` (Debian's postgresql-15 with tools/image/postgres-entrypoint.sh). They are kept,
#    so later runs only build the service image (layers cached).
# Then it checks the image: non-root; no test tools, no embedded PostgreSQL, no sources; one clear
# line naming WALLET_DATABASE_URL when it is missing; three containers migrating a new database at
# once (started before it accepts connections); /health and its HEALTHCHECK; a top-up posted with
# a key made by the image's own CLI; SIGTERM while requests are in flight (tools/image_drain.py);
# and the compose stack under podman-compose: up, migrated, seeded, answering, down.
# Every server listens on 127.0.0.1. Prints `image-test: OK` and the timings; exits 1 on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="$ROOT/${VENV:-.venv}/bin/python"
STATE=${IMAGE_TEST_STATE:-/var/tmp/wallet-image-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=localhost/wallet:image-test
NAME=wallet-image-test
PROJECT=wallet_image_test
CA=/etc/ssl/certs/ca-certificates.crt
STARTED=$(date +%s)

say() { echo "image-test: $*"; }
fail() {
    echo "image-test: FAILED: $*" >&2
    exit 1
}
since() { echo "$(($(date +%s) - $1)) s"; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

[ "$(id -u)" = 0 ] || fail "run as root: rootful podman, and apt-get for what is missing"
[ -x "$PY" ] || fail "no $PY: run through make (make image-test)"
mkdir -p "$STATE"

# --- Packages -----------------------------------------------------------------------------------
missing=""
for pkg in curl podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs containernetworking-plugins iptables; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >"$STATE/apt.log" 2>&1 \
        || { tail -20 "$STATE/apt.log"; fail "apt-get install$missing"; }
fi

# --- podman's settings for this sandbox ---------------------------------------------------------
cat >"$STATE/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$STATE/containers.conf"
BUILD_ARGS=(--format docker --pull=never --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
[ -f "$CA" ] && BUILD_ARGS+=(-v "$CA:$CA:ro")
PODMAN_COMPOSE="$ROOT/${VENV:-.venv}/bin/podman-compose"
[ -x "$PODMAN_COMPOSE" ] || fail "no podman-compose in the venv (requirements-dev.lock)"

cleanup() {
    podman ps -a --format '{{.Names}}' | grep "^$NAME-" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
    (cd "$ROOT" && "$PODMAN_COMPOSE" -p "$PROJECT" down -v -t 5 >/dev/null 2>&1) || true
}
trap cleanup EXIT
cleanup

# --- Stand-in base images -----------------------------------------------------------------------
ENTRYPOINT_SHA=$(sha256sum tools/image/postgres-entrypoint.sh | cut -c1-16)
stand_in() { # tag, label value, packages, then `podman import --change` values; HOOKS: mmdebstrap's
    local tag=$1 label=$2 packages=$3 tar="$STATE/stand-in.tar" t
    shift 3
    t=$(date +%s)
    say "making the stand-in $tag from Debian ($packages)"
    local changes=(--change "LABEL wallet.stand-in=$label"
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for change in "$@"; do changes+=(--change "$change"); done
    mmdebstrap --variant=minbase --aptopt='APT::Install-Recommends "false"' --include="$packages" \
        "${HOOKS[@]}" bookworm "$tar" "$MIRROR" >"$STATE/mmdebstrap.log" 2>&1 \
        || { tail -20 "$STATE/mmdebstrap.log"; fail "mmdebstrap $tag"; }
    podman import "${changes[@]}" "$tar" "$tag" >/dev/null
    rm -f "$tar"
    say "stand-in $tag made in $(since "$t")"
}
label_of() { podman image inspect --format '{{index .Config.Labels "wallet.stand-in"}}' "$1" 2>/dev/null || true; }

if ! podman image exists python:3.11-slim; then
    # Debian's pip refuses to install outside a venv (PEP 668); the real image's does not.
    HOOKS=(--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED')
    stand_in localhost/python:3.11-slim python python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
        'CMD ["python3"]'
fi
# A real postgres:15 (no label) is kept; a stand-in is remade when its entry point changed.
if ! podman image exists postgres:15 || [[ "$(label_of postgres:15)" == postgres-* && "$(label_of postgres:15)" != "postgres-$ENTRYPOINT_SHA" ]]; then
    # No cluster of Debian's own: the entry point makes one in PGDATA, as the real image does.
    HOOKS=(--customize-hook='rm -rf "$1"/var/lib/postgresql/15 "$1"/etc/postgresql/15'
        --customize-hook="copy-in $ROOT/tools/image/postgres-entrypoint.sh /usr/local/bin")
    stand_in localhost/postgres:15 "postgres-$ENTRYPOINT_SHA" postgresql-15 \
        'ENV PGDATA=/var/lib/postgresql/data' 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' \
        'CMD []' 'EXPOSE 5432' 'STOPSIGNAL SIGINT'
fi

# --- The image ----------------------------------------------------------------------------------
t=$(date +%s)
podman build "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$STATE/build.log" 2>&1 || { tail -30 "$STATE/build.log"; fail "podman build"; }
BUILD_TIME=$(since "$t")
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in $BUILD_TIME ($((SIZE / 1000000)) MB, base $(($(podman image inspect --format '{{.Size}}' python:3.11-slim) / 1000000)) MB)"

# Runs as a non-root user, with a HEALTHCHECK that has a start period.
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = wallet ] || fail "the image's user is not wallet"
uid=$(podman run --rm "$IMAGE" id -u 2>/dev/null)
[ "$uid" != 0 ] || fail "the container runs as root"
start_period=$(podman image inspect --format '{{.Config.Healthcheck.StartPeriod}}' "$IMAGE")
[[ "$start_period" != "" && "$start_period" != 0* ]] || fail "HEALTHCHECK lost or without a start period"
say "runs as uid $uid; HEALTHCHECK kept, start period $start_period"

# No test tools, no embedded PostgreSQL, no sources or build tree.
contents=$(podman run --rm "$IMAGE" python -c '
import importlib.util, os
tools = ["pytest", "hypothesis", "schemathesis", "ruff", "mypy", "playwright", "pgserver", "tests", "tools"]
found = [m for m in tools if importlib.util.find_spec(m)]
found += [p for p in ("/app/src", "/app/build", "/build", "/opt/wallet/bin/pip") if os.path.exists(p)]
for top in ("/opt", "/usr", "/home"):
    for d, _, files in os.walk(top):
        found += [os.path.join(d, f) for f in files if f in ("postgres", "initdb", "pg_ctl")]
print(" ".join(found) or "none")' 2>/dev/null)
[ "$contents" = none ] || fail "the image holds what it should not: $contents"
say "no test tools, no embedded PostgreSQL, no sources in the image"

# Without WALLET_DATABASE_URL: one line naming it, and a non-zero exit.
podman run -d --name "$NAME-nourl" "$IMAGE" >/dev/null 2>>"$STATE/podman.log"
rc=$(podman wait "$NAME-nourl")
out=$(podman logs "$NAME-nourl" 2>&1)
[ "$rc" != 0 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == *WALLET_DATABASE_URL* ]] \
    || fail "without WALLET_DATABASE_URL (exit $rc): $out"
say "without WALLET_DATABASE_URL: exit $rc, \"$out\""

# --- Against PostgreSQL: the stand-in on this machine's loopback --------------------------------
PGPORT=$(free_port)
DB_URL="postgresql://wallet:wallet@127.0.0.1:$PGPORT/wallet"
podman run -d --name "$NAME-db" --network host -e POSTGRES_USER=wallet -e POSTGRES_PASSWORD=wallet \
    -e POSTGRES_DB=wallet -e PGPORT="$PGPORT" -e POSTGRES_LISTEN_ADDRESSES=127.0.0.1 postgres:15 \
    >/dev/null 2>>"$STATE/podman.log"
# Three containers migrate and seed the new database at once, started before it accepts
# connections: they wait for it (backoff), then take turns under the migration lock.
t=$(date +%s)
for i in 1 2 3; do
    podman run -d --name "$NAME-migrate$i" --network host -e WALLET_DATABASE_URL="$DB_URL" "$IMAGE" \
        sh -c 'wallet migrate && wallet seed --reference-only' >/dev/null 2>>"$STATE/podman.log"
done
retries=0
for i in 1 2 3; do
    rc=$(podman wait "$NAME-migrate$i")
    log=$(podman logs "$NAME-migrate$i" 2>&1)
    [ "$rc" = 0 ] || { printf '%s\n' "$log" | tail -20; fail "container $i of 3 migrating at once: exit $rc"; }
    retries=$((retries + $(printf '%s\n' "$log" | grep -c database_unavailable || true)))
done
say "3 containers migrated and seeded one new database at once: all exit 0 in $(since "$t") ($retries connection retries while it started)"

# The service: /health, its HEALTHCHECK, a key from its own CLI, a user and a top-up.
API_PORT=$(free_port)
BASE="http://127.0.0.1:$API_PORT"
podman run -d --name "$NAME-api" --network host -e WALLET_DATABASE_URL="$DB_URL" -e WALLET_HOST=127.0.0.1 \
    -e PORT="$API_PORT" -e WALLET_WORKERS=2 "$IMAGE" >/dev/null 2>>"$STATE/podman.log"
wait_health() { # base URL, seconds
    for _ in $(seq 1 "$(($2 * 4))"); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/health" || true)" = 200 ] && return 0
        sleep 0.25
    done
    return 1
}
t=$(date +%s)
wait_health "$BASE" 90 || { podman logs "$NAME-api" 2>&1 | tail -20; fail "/health never answered 200"; }
say "/health 200 after $(since "$t")"
podman healthcheck run "$NAME-api" >/dev/null 2>&1 || fail "the image's HEALTHCHECK failed on a serving container"
TOKEN=$(podman exec "$NAME-api" wallet keys create --name image-test --scope admin --scope credit --scope read)
[[ "$TOKEN" == wk_* ]] || fail "wallet keys create printed: $TOKEN"
auth=(-H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json")
code=$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" -d '{"user_id": "user_image", "name": "Image"}' "$BASE/api/v1/users")
[ "$code" = 201 ] || fail "creating a user: $code"
code=$(curl -s -o "$STATE/topup.json" -w '%{http_code}' "${auth[@]}" \
    -d '{"user_id": "user_image", "asset_type": "GOLD_COINS", "amount": 100, "idempotency_key": "image-test-1"}' \
    "$BASE/api/v1/transactions/topup")
[ "$code" = 201 ] || fail "top-up: $code $(cat "$STATE/topup.json")"
balance() {
    curl -s "${auth[@]}" "$BASE/api/v1/wallets/user_image/balance" \
        | "$PY" -c 'import json, sys; print({b["asset_type"]: b["balance"] for b in json.load(sys.stdin)["balances"]}["GOLD_COINS"])'
}
[ "$(balance)" = 100 ] || fail "balance after a top-up of 100: $(balance)"
say "HEALTHCHECK healthy; key from \`wallet keys create\`; top-up 201, balance 100"

# SIGTERM while requests are in flight: they finish, and the ledger has exactly what was answered.
drain=$("$PY" -m tools.image_drain "$BASE" "$TOKEN" user_image "$NAME-api") || fail "shutdown: $drain"
say "SIGTERM under load: $drain"
podman start "$NAME-api" >/dev/null 2>>"$STATE/podman.log"
wait_health "$BASE" 90 || fail "the service did not start again after SIGTERM"
answered=$(printf '%s' "$drain" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["answered_201"])')
expected=$((100 + answered + 1)) # the first top-up, the answered ones, the held one
[ "$(balance)" = "$expected" ] || fail "after SIGTERM the balance is $(balance), answered top-ups make $expected"
podman exec "$NAME-api" wallet verify >"$STATE/verify.log" 2>&1 || { cat "$STATE/verify.log"; fail "wallet verify"; }
say "restarted: balance $expected = 100 + $answered answered + 1 held, wallet verify clean"
podman rm -f -t 10 "$NAME-api" "$NAME-db" >/dev/null 2>&1

# --- The compose stack under podman-compose -----------------------------------------------------
t=$(date +%s)
HTTP_PORT=$(free_port)
COMPOSE=("$PODMAN_COMPOSE" -p "$PROJECT" --podman-build-args="${BUILD_ARGS[*]}")
WALLET_HTTP_PORT=$HTTP_PORT "${COMPOSE[@]}" up -d --build >"$STATE/compose.log" 2>&1 \
    || { tail -30 "$STATE/compose.log"; fail "podman-compose up"; }
BASE="http://127.0.0.1:$HTTP_PORT"
wait_health "$BASE" 120 || { "${COMPOSE[@]}" logs >>"$STATE/compose.log" 2>&1; tail -30 "$STATE/compose.log"; fail "compose: /health never answered 200"; }
TOKEN=$("${COMPOSE[@]}" exec -T api wallet keys create --name compose-test --scope read 2>>"$STATE/compose.log" | tail -n1 | tr -d "\r")
[[ "$TOKEN" == wk_* ]] || fail "compose: wallet keys create printed: $TOKEN"
alice=$(curl -s -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/wallets/user_001/balance")
[[ "$alice" == *'"GOLD_COINS"'* ]] || fail "compose: the demo user's balance: $alice"
say "compose stack (podman-compose): up, migrated, seeded with the demo, answering in $(since "$t")"
"${COMPOSE[@]}" down -v -t 10 >>"$STATE/compose.log" 2>&1 || fail "podman-compose down"
# The compose build's tag, and the layers earlier builds left untagged (the stand-ins stay).
podman rmi "${PROJECT}_api" >/dev/null 2>&1 || true
podman image prune -f >/dev/null 2>&1 || true

say "OK (image $((SIZE / 1000000)) MB, build $BUILD_TIME, total $(since "$STARTED"))"
