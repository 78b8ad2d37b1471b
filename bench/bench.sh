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
#   forwarder (edge a pushes to cloud b), against native logical replication
#     3. catch-up of a 100k single-row-transaction backlog, edge -> cloud:
#        edgesync rows/s / native rows/s, append-only table              goal >= 1.0
#        and last_writer_wins table                                      goal >= 0.8
#     4. bytes on the wire for that backlog (a counting TCP proxy on the
#        link): edgesync / native                                        goal <= 0.25
#     5. edge local insert throughput, peer attached and pushing in
#        realtime / no edgesync table or peer                            goal >= 0.9
#     6. realtime mode at 1000 rows/s: p50 and p99 delay from the edge
#        commit to the row on the cloud                                  goal p99 <= 250 ms
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
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
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

# A subscription on b to bench_TABLE, reaching a through PORT, created and
# then disabled (its slot exists: changes from now on wait for it).
paused_subscription() { # table, port
    local t="$1" workers="SELECT count(*) FROM pg_stat_subscription WHERE subname = 'sub_$1' AND pid IS NOT NULL"
    q "$PORT_B" -c "CREATE SUBSCRIPTION sub_$t CONNECTION 'host=127.0.0.1 port=$2 user=postgres dbname=postgres' PUBLICATION bench_$t WITH (copy_data = false)" >/dev/null
    wait_until "sub_$t to start" 60 "$PORT_B" "$workers" 1
    q "$PORT_B" -c "ALTER SUBSCRIPTION sub_$t DISABLE" >/dev/null
    wait_until "sub_$t to stop" 60 "$PORT_B" "$workers" 0
}

# BACKLOG single-row transactions into TABLE on a; prints the table's row count.
write_backlog() { # table
    "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT_A" -U postgres -c 2 -j 2 -t $((BACKLOG / 2)) -f "$(insert_script "$1")" postgres >/dev/null 2>&1
    val "$PORT_A" "SELECT count(*) FROM $1"
}

catch_up_rows_per_s() { # table
    local t="$1"
    paused_subscription "$t" "$PORT_A"
    local want; want=$(write_backlog "$t")
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

# --- the forwarder ------------------------------------------------------------
echo "== forwarder =="
# Separate tables for the two transports, so that neither carries the other's rows.
PORT_PROXY=$((PORT_B + 1))
python3 "$ROOT/scripts/byte_counting_proxy.py" "$PORT_PROXY" "$PORT_B" "$WORK/proxy.bytes" &
PROXY_PID=$!
PORT_PROXY_NATIVE=$((PORT_B + 2))
python3 "$ROOT/scripts/byte_counting_proxy.py" "$PORT_PROXY_NATIVE" "$PORT_A" "$WORK/proxy_native.bytes" &
PROXY_NATIVE_PID=$!
trap 'kill $PROXY_NATIVE_PID 2>/dev/null || true; cleanup' EXIT
deadline=$((SECONDS + 30))
until [ -s "$WORK/proxy.bytes" ] && [ -s "$WORK/proxy_native.bytes" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "bench: the byte-counting proxies did not start" >&2; exit 1; }
    sleep 0.05
done
for n in "$PORT_A" "$PORT_B"; do
    q "$n" -c "CREATE TABLE es_plain $TABLE_DDL; CREATE TABLE es_lww $TABLE_DDL;
        SELECT edgesync.add_table('es_plain', sync => 'up'); SELECT edgesync.add_table('es_lww', sync => 'both');" >/dev/null
done
q "$PORT_B" -c "CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login; SELECT edgesync.register_edge('bench_a', 'edge_login');" >/dev/null
q "$PORT_A" -c "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port=$PORT_PROXY dbname=postgres user=edge_login', mode => 'on_demand')" >/dev/null
wait_until "the forwarder to start" 60 "$PORT_A" "SELECT count(*) FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL" 1
q "$PORT_A" -c "SELECT edgesync.sync_now('cloud')" >/dev/null

# The proxy's byte count, as written after now (it rewrites its file every 50 ms).
bytes_now() { # proxy name
    local since deadline n at
    since=$(date +%s.%N)
    deadline=$((SECONDS + 10))
    while :; do
        read -r n at < "$WORK/$1.bytes" || true
        if [ -n "${at:-}" ] && awk -v a="$at" -v s="$since" 'BEGIN { exit !(a > s) }'; then echo "$n"; return; fi
        [ "$SECONDS" -lt "$deadline" ] || { echo "bench: the byte counter of $1 stopped" >&2; exit 1; }
        sleep 0.01
    done
}

# One catch-up of a BACKLOG-row backlog over `transport` (native | edgesync)
# into `table` (plain | lww); prints "rows_per_s bytes_on_the_wire".
catch_up() { # transport table
    local transport="$1" table proxy start end before after want
    if [ "$transport" = native ]; then
        table="$2" proxy=proxy_native
        paused_subscription "$table" "$PORT_PROXY_NATIVE"
    else
        table="es_$2" proxy=proxy
        # move the slot past the other transport's WAL first (not timed)
        q "$PORT_A" -c "SELECT edgesync.sync_now('cloud')" >/dev/null
    fi
    want=$(write_backlog "$table")
    before=$(bytes_now "$proxy")
    start=$(date +%s.%N)
    if [ "$transport" = native ]; then
        q "$PORT_B" -c "ALTER SUBSCRIPTION sub_$table ENABLE" >/dev/null
    else
        q "$PORT_A" -c "SELECT edgesync.sync_now('cloud')" >/dev/null
    fi
    wait_until "the $transport catch-up of $table" 600 "$PORT_B" "SELECT count(*) FROM $table" "$want"
    end=$(date +%s.%N)
    after=$(bytes_now "$proxy")
    if [ "$transport" = native ]; then
        q "$PORT_B" -c "DROP SUBSCRIPTION sub_$table" >/dev/null
    fi
    awk -v n="$BACKLOG" -v s="$start" -v e="$end" -v b="$before" -v a="$after" 'BEGIN { printf "%.0f %d\n", n / (e - s), a - b }'
}
reset_all() { for p in "$PORT_A" "$PORT_B"; do q "$p" -c "TRUNCATE plain, lww, es_plain, es_lww" >/dev/null; done; }

declare -A rate bytes
for t in plain lww; do
    for transport in native edgesync; do rate[$transport.$t]=""; bytes[$transport.$t]=""; done
    for _ in $(seq "$ROUNDS"); do
        for transport in native edgesync; do
            read -r r b < <(catch_up "$transport" "$t")
            rate[$transport.$t]+="$r "; bytes[$transport.$t]+="$b "
        done
        reset_all
    done
done
med() { printf '%s\n' $1 | median; }
for t in plain lww; do
    echo "catch-up of $BACKLOG single-row transactions into $t, rows/s (median of $ROUNDS): native $(med "${rate[native.$t]}"), edgesync $(med "${rate[edgesync.$t]}")"
    echo "  bytes on the wire: native $(med "${bytes[native.$t]}"), edgesync $(med "${bytes[edgesync.$t]}")"
done
echo "RATIO edgesync_catch_up/native, append-only = $(ratio "$(med "${rate[edgesync.plain]}")" "$(med "${rate[native.plain]}")")   (goal >= 1.0)"
echo "RATIO edgesync_catch_up/native, last_writer_wins = $(ratio "$(med "${rate[edgesync.lww]}")" "$(med "${rate[native.plain]}")")   (goal >= 0.8; native into the same policy table: $(ratio "$(med "${rate[edgesync.lww]}")" "$(med "${rate[native.lww]}")"))"
echo "RATIO edgesync_bytes_on_wire/native = $(ratio "$(med "${bytes[edgesync.plain]}")" "$(med "${bytes[native.plain]}")")   (goal <= 0.25)"

# --- local inserts with a peer pushing in realtime ------------------------------
q "$PORT_A" -c "SELECT edgesync.alter_peer('cloud', mode => 'realtime')" >/dev/null
pushing_tps() { # baseline | pushing
    if [ "$1" = baseline ]; then
        q "$PORT_A" -c "SELECT edgesync.pause_peer('cloud')" >/dev/null
        wait_until "the forwarder to stop" 60 "$PORT_A" "SELECT count(*) FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL" 0
        insert_tps plain
    else
        q "$PORT_A" -c "SELECT edgesync.resume_peer('cloud')" >/dev/null
        wait_until "the forwarder to start" 60 "$PORT_A" "SELECT count(*) FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL" 1
        insert_tps es_plain
    fi
}
base=(); pushing=()
for _ in $(seq "$ROUNDS"); do
    base+=("$(pushing_tps baseline)")
    pushing+=("$(pushing_tps pushing)")
    q "$PORT_A" -c "SELECT edgesync.sync_now('cloud')" >/dev/null
    reset_all
done
base_tps=$(printf '%s\n' "${base[@]}" | median); pushing_tps_med=$(printf '%s\n' "${pushing[@]}" | median)
echo "edge inserts, tps (median of $ROUNDS x ${DURATION}s): no edgesync table or peer $base_tps, enrolled table with the peer pushing in realtime $pushing_tps_med"
echo "RATIO edge_inserts_with_peer_pushing/without = $(ratio "$pushing_tps_med" "$base_tps")   (goal >= 0.9)"

# --- realtime delay at 1000 rows/s ----------------------------------------------
for p in "$PORT_A" "$PORT_B"; do
    q "$p" -c "CREATE TABLE es_delay (id bigint PRIMARY KEY, written_at timestamptz NOT NULL);
        SELECT edgesync.add_table('es_delay', sync => 'up');" >/dev/null
done
q "$PORT_B" -c "ALTER TABLE es_delay ADD COLUMN arrived_at timestamptz NOT NULL DEFAULT clock_timestamp()" >/dev/null
printf 'INSERT INTO es_delay VALUES (nextval(%s), clock_timestamp());\n' "'ids'" > "$WORK/delay.sql"
"$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT_A" -U postgres -c 2 -j 2 -R 1000 -T "$DURATION" -f "$WORK/delay.sql" postgres >/dev/null 2>&1
want=$(val "$PORT_A" "SELECT count(*) FROM es_delay")
wait_until "the delay rows to arrive" 120 "$PORT_B" "SELECT count(*) FROM es_delay" "$want"
read -r p50 p99 < <(val "$PORT_B" "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
    FROM (SELECT extract(epoch FROM arrived_at - written_at) * 1000 AS ms FROM es_delay) d" | tr '|' ' ')
echo "realtime, $want rows at 1000 rows/s: delay edge commit -> cloud, p50 $p50 ms, p99 $p99 ms"
echo "RESULT realtime_delay_p99_ms = $p99   (goal <= 250)"
