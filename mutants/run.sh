#!/usr/bin/env bash
# `make mutants`: mutation testing of the pure modules in src/model/ (see
# README.md beside this file). Extra arguments go to cargo-mutants, e.g.
# `-f src/model/conflict/lww.rs`. Fails when a mutant survives that is not
# in survivors.txt (the accepted ones, each with its reason).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARGO_MUTANTS_VERSION=27.1.0
OUT="$ROOT/target/mutants"
CRATE="$OUT/crate"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[mutants] %s\n' "$*"; }

if ! cargo mutants --version 2>/dev/null | grep -qx "cargo-mutants $CARGO_MUTANTS_VERSION"; then
    log "installing cargo-mutants $CARGO_MUTANTS_VERSION"
    cargo install cargo-mutants --version "$CARGO_MUTANTS_VERSION" --locked --quiet
fi

# The crate: this folder plus a fresh copy of src/model/ (new modification
# times, so cargo rebuilds it; its dependencies stay built between runs).
rm -rf "$CRATE/src" "$CRATE/.cargo"
mkdir -p "$CRATE/src" "$CRATE/.cargo"
cp "$ROOT/mutants/Cargo.toml" "$ROOT/mutants/Cargo.lock" "$CRATE/"
cp "$ROOT/mutants/mutants.toml" "$CRATE/.cargo/mutants.toml"
cp "$ROOT/mutants/src/lib.rs" "$CRATE/src/"
cp -r "$ROOT/src/model" "$CRATE/src/"

# In place in the staged copy: one mutant at a time, the work tree untouched.
rc=0
(cd "$CRATE" && cargo mutants --in-place --output "$OUT" "$@") || rc=$?
# 2: some mutants missed, 3: some timed out (a mutant that hangs the tests
# is caught by the timeout); anything else but 0 is a failed run.
case "$rc" in
    0 | 2 | 3) ;;
    *) log "cargo mutants failed (exit $rc): see $OUT/mutants.out/"; exit "$rc" ;;
esac

# Survivors compared by name without line and column, so that edits above
# them do not matter; duplicates count (comm compares sorted lines pairwise).
names() { sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /' | sort; }
found="$(names < "$OUT/mutants.out/missed.txt")"
known="$(grep -v -e '^#' -e '^[[:space:]]*$' "$ROOT/mutants/survivors.txt" | names)"
new="$(comm -13 <(printf '%s\n' "$known") <(printf '%s\n' "$found") | sed '/^$/d')"
gone="$(comm -23 <(printf '%s\n' "$known") <(printf '%s\n' "$found") | sed '/^$/d')"
timeouts="$(wc -l < "$OUT/mutants.out/timeout.txt")"

[ "$timeouts" -eq 0 ] || log "$timeouts mutant(s) hung the tests and were stopped by the timeout (counted as caught)"
if [ $# -eq 0 ] && [ -n "$gone" ]; then
    log "accepted survivors now caught by a test: remove them from mutants/survivors.txt:"
    printf '  %s\n' "$gone"
fi
if [ -n "$new" ]; then
    log "mutants no unit test catches (diffs in $OUT/mutants.out/diff/):"
    printf '  %s\n' "$new"
    log "add a test that fails for each, or, if it cannot change behaviour, list it with the reason in mutants/survivors.txt"
    exit 1
fi
log "every mutant is caught, or accepted in mutants/survivors.txt"
