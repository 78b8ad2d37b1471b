#!/usr/bin/env bash
# edgesync benchmarks: each measurement runs side by side with its baseline
# in the same run, on the same machine, and is reported as a ratio.
#
#   conflict engine
#     1. local single-row insert throughput (pgbench, 2 clients):
#        table under a last_writer_wins policy / the same table without.  goal >= 0.95
#     2. a native subscription catching up 100k single-row transactions:
#        subscriber table under a policy / without.                      goal >= 0.8
#
# Needs PG_CONFIG (PostgreSQL 18 with edgesync installed) and PG_USER.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BINDIR="$("${PG_CONFIG:?set PG_CONFIG}" --bindir)"
PG_USER="${PG_USER:-postgres}"
WORK="$(mktemp -d /tmp/edgesync-bench.XXXXXX)"
DURATION="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-5}"
BACKLOG="${BENCH_BACKLOG:-100000}"
PORT_A=$((20000 + RANDOM % 20000))
PORT_B=$((PORT_A + 1))

as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -n -u "$PG_USER" -- "$@"; else "$@"; fi; }
q() { local port="$1"; shift; "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
val() { q "$1" -tAc "$2"; }

node() { # name port
    as_pg "$BINDIR/initdb" -D "$WORK/$1" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    cat >> "$WORK/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/$1'
shared_preload_libraries = 'edgesync'
wal_level = logical
synchronous_commit = off
max_wal_size = '4GB'
shared_buffers = '512MB'
CONF
    as_pg "$BINDIR/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start >/dev/null
}

cleanup() {
    for n in a b; do
        [ -f "$WORK/$n/postmaster.pid" ] && as_pg "$BINDIR/pg_ctl" -D "$WORK/$n" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$WORK"

TABLE_DDL="(id bigint PRIMARY KEY, sensor int NOT NULL, value float8 NOT NULL, at timestamptz NOT NULL)"

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

echo "== conflict engine =="
node a "$PORT_A"
q "$PORT_A" -c "CREATE EXTENSION edgesync; SELECT edgesync.create_node('bench_a', 1);
    CREATE SEQUENCE ids; CREATE TABLE plain $TABLE_DDL; CREATE TABLE lww $TABLE_DDL;
    SELECT edgesync.set_conflict_policy('lww');" >/dev/null

insert_script() { # table -> a pgbench script of single-row inserts into it
    printf '\\set s random(1, 100)\nINSERT INTO %s VALUES (nextval(%s), :s, random(), now());\n' "$1" "'ids'" > "$WORK/insert_$1.sql"
    echo "$WORK/insert_$1.sql"
}

wait_until() { # description, seconds, port, query, expected value
    local deadline=$((SECONDS + $2))
    until [ "$(val "$3" "$4")" = "$5" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "bench: timed out waiting for $1" >&2; exit 1; }
        sleep 0.02
    done
}

# Run `measure TABLE` for plain and lww, alternating so that drift hits
# both alike, with `reset` between rounds; prints "plain_median lww_median".
alternate_rounds() { # measure, reset
    local plain=() lww=()
    for _ in $(seq "$ROUNDS"); do
        plain+=("$($1 plain)")
        lww+=("$($1 lww)")
        $2
    done
    echo "$(printf '%s\n' "${plain[@]}" | median) $(printf '%s\n' "${lww[@]}" | median)"
}

insert_tps() { # table -> transactions per second of one pgbench run
    "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT_A" -U postgres -c 2 -j 2 -T "$DURATION" -f "$(insert_script "$1")" postgres 2>/dev/null \
        | awk '/^tps = / { print $3 }'
}
reset_a() { q "$PORT_A" -c "TRUNCATE plain, lww" >/dev/null; }
read -r plain_tps lww_tps < <(alternate_rounds insert_tps reset_a)
echo "local inserts, tps (median of $ROUNDS x ${DURATION}s): without policy $plain_tps, last_writer_wins $lww_tps"
echo "RATIO local_insert_with_policy/without = $(ratio "$lww_tps" "$plain_tps")   (goal >= 0.95)"

# --- native subscription catch-up -------------------------------------------
node b "$PORT_B"
q "$PORT_B" -c "CREATE EXTENSION edgesync; SELECT edgesync.create_node('bench_b', 2);
    CREATE TABLE plain $TABLE_DDL; CREATE TABLE lww $TABLE_DDL; SELECT edgesync.set_conflict_policy('lww');" >/dev/null
q "$PORT_A" -c "TRUNCATE plain, lww; CREATE PUBLICATION bench_plain FOR TABLE plain; CREATE PUBLICATION bench_lww FOR TABLE lww;" >/dev/null

catch_up_rows_per_s() { # table
    local t="$1" workers="SELECT count(*) FROM pg_stat_subscription WHERE subname = 'sub_$1' AND pid IS NOT NULL"
    q "$PORT_B" -c "CREATE SUBSCRIPTION sub_$t CONNECTION 'host=127.0.0.1 port=$PORT_A user=postgres dbname=postgres' PUBLICATION bench_$t WITH (copy_data = false)" >/dev/null
    wait_until "sub_$t to start" 60 "$PORT_B" "$workers" 1
    q "$PORT_B" -c "ALTER SUBSCRIPTION sub_$t DISABLE" >/dev/null
    wait_until "sub_$t to stop" 60 "$PORT_B" "$workers" 0
    "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT_A" -U postgres -c 2 -j 2 -t $((BACKLOG / 2)) -f "$(insert_script "$t")" postgres >/dev/null 2>&1
    local want; want=$(val "$PORT_A" "SELECT count(*) FROM $t")
    local start end
    start=$(date +%s.%N)
    q "$PORT_B" -c "ALTER SUBSCRIPTION sub_$t ENABLE" >/dev/null
    wait_until "the catch-up of $t" 600 "$PORT_B" "SELECT count(*) FROM $t" "$want"
    end=$(date +%s.%N)
    q "$PORT_B" -c "DROP SUBSCRIPTION sub_$t" >/dev/null
    awk -v n="$BACKLOG" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }'
}
reset_both() { reset_a; q "$PORT_B" -c "TRUNCATE plain, lww" >/dev/null; }
read -r plain_rate lww_rate < <(alternate_rounds catch_up_rows_per_s reset_both)
echo "native subscription catch-up of $BACKLOG single-row transactions, rows/s (median of $ROUNDS): without policy $plain_rate, last_writer_wins $lww_rate"
echo "RATIO native_catch_up_with_policy/without = $(ratio "$lww_rate" "$plain_rate")   (goal >= 0.8)"
