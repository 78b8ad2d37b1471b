#!/usr/bin/env bash
# edgesync benchmarks. Each measurement runs beside its baseline in the same
# run, on the same machine, the two alternating round by round, and is
# reported as the ratio of their medians over BENCH_ROUNDS rounds. An edge
# (node a) and a cloud (node b) on loopback. The rows, with their bars:
#
#   1. catch-up of a BACKLOG of single-row transactions, edge -> cloud,
#      append-only table: edgesync rows/s / native logical replication rows/s   >= 1.2
#   2. the same into a last_writer_wins table / native into a plain table        >= 0.9
#   3. edge inserts (pgbench tps) while edgesync pushes them in realtime /
#      while native logical replication streams the same kind of table to the
#      same cloud (the inserts with no replication are shown too)                >= 1.0
#   4. local inserts (pgbench, the two tables mixed in each run: tps each
#      would reach alone) into a last_writer_wins table / the same table
#      without a policy                                                          >= 0.95
#   5. a native subscription catching up the backlog: into a policy table /
#      into the same table without                                              >= 0.85
#   6. bytes on the wire for the catch-up of row 1 (a counting TCP proxy on
#      each link, in rounds of their own): edgesync / native                     <= 0.15
#   7. realtime delay from the edge's commit to the row on the cloud, p99 at
#      1000 rows/s: edgesync / native logical replication                        <= 1.5
#
# Each row is printed as it is measured, and all of them at the end with
# PASS or MISS against the bar: information only, the exit status is 0
# unless the bench itself broke.
#
# Needs PG_CONFIG (a PostgreSQL 18 with edgesync installed), PG_USER (the OS
# user that runs PostgreSQL when we are root) and python3. Settings:
#   BENCH_ROUNDS (3), BENCH_SECONDS (10: each pgbench run), BENCH_BACKLOG (100000)
#   BENCH_SYNC_COMMIT (off): synchronous_commit on both nodes. Native logical
#                  replication sends only flushed WAL: with off, its realtime
#                  delay (row 7) is mostly the WAL writer's 200 ms.
#   BENCH_SMOKE=1: 1 round, 2 s runs, a 10000-row backlog: that every row is
#                  measured, in well under a minute (CI); its ratios say little.
#   BENCH_ROWS ("1 2 3 4 5 6 7"): the rows to measure. Rows 1, 2 and 5 come
#                  from the same rounds, so asking for one measures all three.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BINDIR="$("${PG_CONFIG:?set PG_CONFIG}" --bindir)"
PG_USER="${PG_USER:-postgres}"
if [ "${BENCH_SMOKE:-0}" = 1 ]; then defaults=(1 2 10000); else defaults=(3 10 100000); fi
ROUNDS="${BENCH_ROUNDS:-${defaults[0]}}"
ROWS=" ${BENCH_ROWS:-1 2 3 4 5 6 7} "
wanted() { local row; for row in "$@"; do case "$ROWS" in *" $row "*) return 0 ;; esac; done; return 1; } # rows...
DURATION="${BENCH_SECONDS:-${defaults[1]}}"
BACKLOG="${BENCH_BACKLOG:-${defaults[2]}}"
WORK="$(mktemp -d /tmp/edgesync-bench.XXXXXX)"
RESULTS="$WORK/results"
mkdir "$RESULTS"
PROXY_PIDS=()
TAKEN_PORTS=" "

fail() { echo "bench: $*" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -n -u "$PG_USER" -- "$@"; else "$@"; fi; }
q() { local port="$1"; shift; PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
val() { q "$1" -tAc "$2"; }

cleanup() {
    local pid n
    for pid in "${PROXY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for n in a b; do
        [ -f "$WORK/$n/postmaster.pid" ] && as_pg "$BINDIR/pg_ctl" -D "$WORK/$n" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$WORK"
[ -f "$("$PG_CONFIG" --sharedir)/extension/edgesync.control" ] \
    || fail "edgesync is not installed in $("$PG_CONFIG" --sharedir) (make install-pg18)"

# --- ports and nodes ---------------------------------------------------------

port_is_free() { # port: nothing is bound to it on 127.0.0.1
    python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# Set variable $1 to a port for a node: outside the kernel's ephemeral range
# (a client connection of this machine may hold any port inside it, and a
# node started there fails with "Address already in use"; outside it only a
# listener can hold one, and the bind check sees that), free, and not taken
# before by this run.
pick_port() { # variable
    local low high port
    read -r low high < /proc/sys/net/ipv4/ip_local_port_range
    for _ in $(seq 500); do
        port=$(( ((RANDOM << 15) | RANDOM) % 55536 + 10000 ))
        [ "$port" -lt "$low" ] || [ "$port" -gt "$high" ] || continue
        case "$TAKEN_PORTS" in *" $port "*) continue ;; esac
        port_is_free "$port" || continue
        TAKEN_PORTS+="$port "
        printf -v "$1" %s "$port"
        return
    done
    fail "no free port from 10000 up outside ip_local_port_range ($low-$high)"
}

node_conf() { # name
    cat >> "$WORK/$1/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/$1'
shared_preload_libraries = 'edgesync'
wal_level = logical
synchronous_commit = ${BENCH_SYNC_COMMIT:-off}
max_wal_size = '4GB'
shared_buffers = '512MB'
CONF
}

# Start node $1 on a port of its own, put into variable $2. A port someone
# took between the check and the start costs one more try, not the run.
start_node() { # name, port variable
    as_pg "$BINDIR/initdb" -D "$WORK/$1" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    node_conf "$1"
    for _ in 1 2 3; do
        pick_port "$2"
        echo "port = ${!2}" >> "$WORK/$1/postgresql.conf"
        as_pg "$BINDIR/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start >/dev/null 2>&1 && return
    done
    tail -n 20 "$WORK/$1.log" >&2
    fail "node $1 did not start"
}

# --- waiting -----------------------------------------------------------------

wait_until() { # description, seconds, port, query, expected value
    local deadline=$((SECONDS + $2))
    until [ "$(val "$3" "$4")" = "$5" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $1"
        sleep 0.05
    done
}

# Wait for row ID of TABLE on the node at PORT, polled by the server itself
# every 2 ms: a timed wait must cost the machine next to nothing.
await_row() { # port, table, id, seconds
    q "$1" -c "DO \$\$ DECLARE deadline timestamptz := clock_timestamp() + interval '$4 s'; BEGIN
        WHILE NOT EXISTS (SELECT FROM $2 WHERE id = $3) LOOP
            IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'bench: row % of $2 did not arrive in $4 s', $3; END IF;
            PERFORM pg_sleep(0.002);
        END LOOP; END \$\$" >/dev/null
}

# --- numbers -----------------------------------------------------------------

clock() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(clock)" 'BEGIN { printf "%.6f", e - s }'; }
median() { # numbers, one a line -> their median, as written when the count is odd
    sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) { print a[(NR + 1) / 2]; exit }
        m = (a[NR / 2] + a[NR / 2 + 1]) / 2; printf (m == int(m)) ? "%d\n" : "%.1f\n", m }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.3f", a / b }'; }

# Run `measure CASE` for each case, round after round, the cases alternating
# so that drift hits all alike, and `between` after each measurement (each
# starts from the same state). What a measurement prints (one line) is kept
# in $RESULTS/CASE.
rounds() { # measure, between, cases...
    local measure="$1" between="$2" c
    shift 2
    for _ in $(seq "$ROUNDS"); do
        for c in "$@"; do
            "$measure" "$c" >> "$RESULTS/$c"
            "$between"
        done
    done
}
med() { awk -v f="${2:-1}" '{ print $f }' "$RESULTS/$1" | median; } # case [field]
each() { awk -v f="${2:-1}" '{ print $f }' "$RESULTS/$1" | paste -sd' '; } # case [field]: every round's

SUMMARY=()
# Print row N of the table (see the top) and keep it for the summary. The
# ratio is measured / baseline, or RATIO when given (paired rounds).
report() { # row, what, measured, baseline, unit, bar ("<op> <value>"), [ratio]
    local r verdict line
    r=${7:-$(ratio "$3" "$4")}
    verdict=$(awk -v r="$r" -v op="${6% *}" -v bar="${6#* }" \
        'BEGIN { if (r == "n/a") print "MISS"; else print ((op == ">=") ? r + 0 >= bar : r + 0 <= bar) ? "PASS" : "MISS" }')
    line=$(printf '%3s  %-58s %10s %10s  %-6s  %6s  %-7s %s' "$1" "$2" "$3" "$4" "$5" "$r" "$6" "$verdict")
    echo "$line"
    SUMMARY+=("$line")
}
header() { printf '%3s  %-58s %10s %10s  %-6s  %6s  %-7s %s\n' row measurement measured baseline unit ratio bar result; }

# --- tables and pgbench ------------------------------------------------------

TABLE_DDL="(id bigint PRIMARY KEY, sensor int NOT NULL, value float8 NOT NULL, at timestamptz NOT NULL)"
ALL_TABLES="plain, lww, es_plain, es_lww, nat_delay, es_delay"

# plain, lww: native replication (lww under a policy); es_*: enrolled in
# edgesync; *_delay: for the realtime delay, with the arrival time on the cloud.
create_tables() { # port, node name, node id
    q "$1" -c "CREATE EXTENSION edgesync; SELECT edgesync.create_node('$2', $3); CREATE SEQUENCE ids;
        CREATE TABLE plain $TABLE_DDL; CREATE TABLE lww $TABLE_DDL; CREATE TABLE nat_delay $TABLE_DDL;
        CREATE TABLE es_plain $TABLE_DDL; CREATE TABLE es_lww $TABLE_DDL; CREATE TABLE es_delay $TABLE_DDL;
        SELECT edgesync.set_conflict_policy('lww', 'last_writer_wins');
        SELECT edgesync.add_table('es_plain', sync => 'up'); SELECT edgesync.add_table('es_lww', sync => 'both');
        SELECT edgesync.add_table('es_delay', sync => 'up');" >/dev/null
}

setup_nodes() {
    start_node a PORT_A
    start_node b PORT_B
    create_tables "$PORT_A" edge 1
    create_tables "$PORT_B" cloud 2
    q "$PORT_A" -c "CREATE PUBLICATION bench_plain FOR TABLE plain; CREATE PUBLICATION bench_lww FOR TABLE lww;
        CREATE PUBLICATION bench_nat_delay FOR TABLE nat_delay" >/dev/null
    q "$PORT_B" -c "ALTER TABLE nat_delay ADD COLUMN arrived_at timestamptz NOT NULL DEFAULT clock_timestamp();
        ALTER TABLE es_delay ADD COLUMN arrived_at timestamptz NOT NULL DEFAULT clock_timestamp()" >/dev/null
}

reset_tables() {
    local port
    for port in "$PORT_A" "$PORT_B"; do q "$port" -c "TRUNCATE $ALL_TABLES; CHECKPOINT" >/dev/null; done
}

# pgbench on the edge, 2 clients, single-row inserts into TABLE.
# A pgbench script of single-row inserts into TABLE; prints its file name.
insert_script() { # table
    printf '\\set s random(1, 100)\nINSERT INTO %s VALUES (nextval(%s), :s, random(), clock_timestamp());\n' "$1" "'ids'" > "$WORK/insert_$1.sql"
    echo "$WORK/insert_$1.sql"
}

edge_pgbench() { # table, pgbench options...
    local script
    script=$(insert_script "$1")
    "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT_A" -U postgres -c 2 -j 2 -f "$script" "${@:2}" postgres \
        > "$WORK/pgbench.out" 2>&1 || { tail -n 20 "$WORK/pgbench.out" >&2; fail "pgbench into $1 failed"; }
}

insert_tps() { # table -> transactions per second of one DURATION-second run
    edge_pgbench "$1" -T "$DURATION"
    awk '/^tps = / { printf "%.0f\n", $3; found = 1 } END { exit !found }' "$WORK/pgbench.out" || fail "pgbench printed no tps"
}

# A marker row (id 0) committed on the edge after everything else in TABLE:
# once it is on the cloud, so is everything before it (both transports apply
# in commit order).
mark() { q "$PORT_A" -c "INSERT INTO $1 VALUES (0, 0, 0, clock_timestamp())" >/dev/null; } # table

same_rows() { # table: the cloud has every row the edge has
    local edge cloud
    edge=$(val "$PORT_A" "SELECT count(*) FROM $1")
    cloud=$(val "$PORT_B" "SELECT count(*) FROM $1")
    [ "$edge" = "$cloud" ] || fail "the cloud has $cloud rows of $1, the edge $edge"
}

deliver_all() { mark "$1"; await_row "$PORT_B" "$1" 0 600; same_rows "$1"; } # table

# --- the two transports ------------------------------------------------------

NATIVE_VIA=""   # the port the cloud's native subscriptions reach the edge on
FORWARDERS="SELECT count(*) FROM edgesync.peers WHERE direction = 'push' AND worker_pid IS NOT NULL"

# A native subscription on the cloud to bench_TABLE, streaming when this returns.
subscribe() { # table
    q "$PORT_B" -c "CREATE SUBSCRIPTION sub_$1 CONNECTION 'host=127.0.0.1 port=$NATIVE_VIA user=postgres dbname=postgres'
        PUBLICATION bench_$1 WITH (copy_data = false)" >/dev/null
    wait_until "sub_$1 to stream" 60 "$PORT_A" \
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'sub_$1' AND state = 'streaming'" 1
}

# A subscription to bench_TABLE whose slot exists (changes from now on wait
# in it) but is disabled, and its slot free for the next worker to take.
paused_subscription() { # table
    subscribe "$1"
    q "$PORT_B" -c "ALTER SUBSCRIPTION sub_$1 DISABLE" >/dev/null
    wait_until "sub_$1 to stop" 60 "$PORT_A" "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'sub_$1' AND active" 0
}

unsubscribe() { q "$PORT_B" -c "DROP SUBSCRIPTION sub_$1" >/dev/null; } # table

setup_peer() {
    q "$PORT_B" -c "CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login;
        SELECT edgesync.register_edge('edge', 'edge_login')" >/dev/null
    q "$PORT_A" -c "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port=$PORT_B dbname=postgres user=edge_login', mode => 'on_demand')" >/dev/null
    wait_until "the forwarder to start" 60 "$PORT_A" "$FORWARDERS" 1
}

sync_now() { q "$PORT_A" -c "SELECT edgesync.sync_now('cloud')" >/dev/null; }

forwarder() { # on | off: resume or pause the peer; its worker runs or is gone on return
    local fn=resume_peer want=1
    if [ "$1" = off ]; then fn=pause_peer want=0; fi
    q "$PORT_A" -c "SELECT edgesync.$fn('cloud')" >/dev/null
    wait_until "the forwarder to be $1" 60 "$PORT_A" "$FORWARDERS" "$want"
}

# The forwarder running and caught up with the edge's WAL (a native round's
# included, which it must read past), before anything is measured.
forwarder_ready() { forwarder on; sync_now; }

point_peer() { # port: the edge reaches the cloud there from now on
    forwarder off
    q "$PORT_A" -c "SELECT edgesync.alter_peer('cloud', conninfo => 'host=127.0.0.1 port=$1 dbname=postgres user=edge_login')" >/dev/null
    forwarder on
}

# --- row 4: local inserts ----------------------------------------------------

# One DURATION-second pgbench run on the edge in which each transaction
# inserts into plain or into lww, picked at random: the two are measured
# at the same moments on the same machine (separate runs of the same
# inserts differ by up to 15% from one to the next here, several times the
# difference measured). Prints what each table's inserts would reach alone,
# 2 clients / their mean latency, from pgbench's transaction log (one
# transaction in ten sampled, at random).
mixed_local_tps() {
    local log="$WORK/mixed"
    rm -rf "$log" && mkdir "$log"
    "$BINDIR/pgbench" -n -h 127.0.0.1 -p "$PORT_A" -U postgres -c 2 -j 2 -T "$DURATION" -f "$(insert_script plain)@1" -f "$(insert_script lww)@1" \
        -l --sampling-rate=0.1 --log-prefix="$log/tx" postgres > "$WORK/pgbench.out" 2>&1 \
        || { tail -n 20 "$WORK/pgbench.out" >&2; fail "pgbench into plain and lww failed"; }
    # fields: client, transaction, latency (us), script (0 plain, 1 lww), ...
    awk '{ sum[$4] += $3; n[$4]++ } END { if (!n[0] || !n[1]) exit 1; printf "%.0f %.0f\n", 2e6 * n[0] / sum[0], 2e6 * n[1] / sum[1] }' "$log"/tx.* \
        || fail "pgbench logged no transactions of one of the tables"
}

bench_local_inserts() {
    echo "== local inserts on the edge: pgbench, 2 clients, ${DURATION} s per round, plain and lww mixed in each run =="
    local plain lww
    for _ in $(seq "$ROUNDS"); do
        mixed_local_tps > "$WORK/mixed.tps"
        read -r plain lww < "$WORK/mixed.tps"
        echo "$plain" >> "$RESULTS/local_plain"
        echo "$lww" >> "$RESULTS/local_lww"
        echo "$(ratio "$lww" "$plain")" >> "$RESULTS/local_ratio"
        reset_tables
    done
    # the two tables share each run's moments, so each run's own ratio is
    # the measurement: the median of those, not the ratio of two medians
    # taken from different runs
    report 4 "local inserts: last_writer_wins / no policy" "$(med local_lww)" "$(med local_plain)" tps ">= 0.95" "$(med local_ratio)"
    echo "     (rounds, tps alone: plain $(each local_plain); lww $(each local_lww); lww / plain $(each local_ratio))"
}

# --- rows 1, 2, 5 and 6: catch-up --------------------------------------------

# Let what is written to TABLE from now on wait on the edge: native, in a
# paused subscription's slot; edgesync, in the on_demand peer's slot, the
# peer caught up first (past the other transport's WAL).
hold() { # transport, table
    if [ "$1" = native ]; then paused_subscription "$2"; else sync_now; fi
}

# Start moving what waits; the timed part starts here.
release() { # transport, table
    if [ "$1" = native ]; then
        q "$PORT_B" -c "ALTER SUBSCRIPTION sub_$2 ENABLE" >/dev/null
    else
        sync_now &
        SYNC_PID=$!
    fi
}

# After the rows arrived: drop the subscription, or let the round finish.
settle() { # transport, table
    if [ "$1" = native ]; then unsubscribe "$2"; else wait "$SYNC_PID"; fi
}

# Bytes the proxy of TRANSPORT carried, as written after now (it rewrites
# its count file every 50 ms).
bytes_now() { # transport
    local since deadline n at
    since=$(clock)
    deadline=$((SECONDS + 10))
    while :; do
        read -r n at _ < "$WORK/$1.bytes" || true
        if [ -n "${at:-}" ] && awk -v a="$at" -v s="$since" 'BEGIN { exit !(a > s) }'; then echo "$n"; return; fi
        [ "$SECONDS" -lt "$deadline" ] || fail "the byte counter of $1 stopped"
        sleep 0.01
    done
}
counting() { [ "${#PROXY_PIDS[@]}" -gt 0 ]; }

# One catch-up of a BACKLOG-transaction backlog on the edge into the cloud's
# table; prints "rows/s bytes-on-the-wire" (bytes 0 unless proxies count them).
catch_up() { # native_plain | native_lww | edgesync_plain | edgesync_lww
    local transport="${1%%_*}" table="${1#*_}" start took before=0 after=0
    [ "$transport" = edgesync ] && table="es_$table"
    hold "$transport" "$table"
    edge_pgbench "$table" -t $((BACKLOG / 2))
    mark "$table"
    if counting; then before=$(bytes_now "$transport"); fi
    start=$(clock)
    release "$transport" "$table"
    await_row "$PORT_B" "$table" 0 600
    took=$(since "$start")
    settle "$transport" "$table"
    if counting; then after=$(bytes_now "$transport"); fi
    same_rows "$table"
    awk -v n=$((BACKLOG / 2 * 2)) -v t="$took" -v b=$((after - before)) 'BEGIN { printf "%.0f %d\n", n / t, b }'
}

bench_catch_up() {
    echo "== catch-up of $BACKLOG single-row transactions, edge -> cloud, $ROUNDS round(s) =="
    NATIVE_VIA="$PORT_A"
    if ! wanted 1 2; then # row 5 alone: native's rounds only
        rounds catch_up reset_tables native_plain native_lww
        report 5 "native catch-up: into a policy table / without" "$(med native_lww)" "$(med native_plain)" rows/s ">= 0.85"
        echo "     (rounds, rows/s: native plain $(each native_plain); native lww $(each native_lww))"
        return
    fi
    rounds catch_up reset_tables native_plain edgesync_plain native_lww edgesync_lww
    report 1 "catch-up, append-only: edgesync / native" "$(med edgesync_plain)" "$(med native_plain)" rows/s ">= 1.2"
    report 2 "catch-up into last_writer_wins: edgesync / native plain" "$(med edgesync_lww)" "$(med native_plain)" rows/s ">= 0.9"
    report 5 "native catch-up: into a policy table / without" "$(med native_lww)" "$(med native_plain)" rows/s ">= 0.85"
    echo "     (edgesync into last_writer_wins / native into the same policy table: $(ratio "$(med edgesync_lww)" "$(med native_lww)"))"
    echo "     (rounds, rows/s: native plain $(each native_plain); edgesync plain $(each edgesync_plain); native lww $(each native_lww); edgesync lww $(each edgesync_lww))"
}

# A byte-counting proxy to 127.0.0.1:TARGET on a port the OS picks; sets
# variable $3 to that port once the proxy listens.
start_proxy() { # transport, target port, port variable
    python3 "$ROOT/scripts/byte_counting_proxy.py" 0 "$2" "$WORK/$1.bytes" 2> "$WORK/$1.proxy.log" &
    local pid=$! deadline=$((SECONDS + 30)) port
    PROXY_PIDS+=("$pid")
    until [ -s "$WORK/$1.bytes" ]; do
        kill -0 "$pid" 2>/dev/null || fail "the $1 proxy died: $(cat "$WORK/$1.proxy.log")"
        [ "$SECONDS" -lt "$deadline" ] || fail "the $1 proxy did not listen within 30 s"
        sleep 0.05
    done
    read -r _ _ port < "$WORK/$1.bytes"
    printf -v "$3" %s "$port"
}

stop_proxies() {
    local pid
    for pid in "${PROXY_PIDS[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
    PROXY_PIDS=()
}

counted_catch_up() { catch_up "${1#counted_}_plain"; } # counted_native | counted_edgesync

# Row 6 in rounds of its own: a proxy in the path costs CPU, more so for
# the transport that sends more, so the timed rounds above have none.
bench_bytes() {
    echo "== bytes on the wire for that catch-up (append-only), $ROUNDS round(s) =="
    local edgesync_via
    start_proxy native "$PORT_A" NATIVE_VIA
    start_proxy edgesync "$PORT_B" edgesync_via
    point_peer "$edgesync_via"
    rounds counted_catch_up reset_tables counted_native counted_edgesync
    point_peer "$PORT_B"
    stop_proxies
    NATIVE_VIA="$PORT_A"
    report 6 "bytes on the wire, catch-up: edgesync / native" "$(med counted_edgesync 2)" "$(med counted_native 2)" bytes "<= 0.15"
}

# --- row 3: edge inserts while replicating ------------------------------------

# Edge inserts for DURATION s while nothing, native logical replication or
# edgesync (realtime) moves them to the cloud; prints tps.
replicating_tps() { # tps_none | tps_native | tps_edgesync
    local transport="${1#tps_}" table=plain tps
    case "$transport" in
        none) forwarder off ;;
        native) forwarder off; subscribe plain ;;
        edgesync) forwarder_ready; table=es_plain ;;
    esac
    tps=$(insert_tps "$table")
    [ "$transport" = none ] || deliver_all "$table"
    [ "$transport" = native ] && unsubscribe plain
    echo "$tps"
}

bench_replicating_inserts() {
    echo "== edge inserts while replicating to the cloud: pgbench, 2 clients, ${DURATION} s per round =="
    q "$PORT_A" -c "SELECT edgesync.alter_peer('cloud', mode => 'realtime')" >/dev/null
    NATIVE_VIA="$PORT_A"
    rounds replicating_tps reset_tables tps_none tps_native tps_edgesync
    report 3 "edge inserts while pushing: edgesync / native streaming" "$(med tps_edgesync)" "$(med tps_native)" tps ">= 1.0"
    echo "     (no replication: $(med tps_none) tps; edgesync / none $(ratio "$(med tps_edgesync)" "$(med tps_none)"), native / none $(ratio "$(med tps_native)" "$(med tps_none)"))"
}

# --- row 7: realtime delay ----------------------------------------------------

# DURATION s of inserts at 1000 rows/s on the edge, moved by native logical
# replication or edgesync (realtime); prints "p50 p99" of the delay in ms
# from the edge's commit to the row on the cloud (its arrived_at).
realtime_delay() { # delay_native | delay_edgesync
    local table=es_delay
    if [ "$1" = delay_native ]; then
        table=nat_delay
        forwarder off
        subscribe nat_delay
    else
        forwarder_ready
    fi
    edge_pgbench "$table" -R 1000 -T "$DURATION"
    deliver_all "$table"
    [ "$table" = nat_delay ] && unsubscribe nat_delay
    val "$PORT_B" "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
        round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)
        FROM (SELECT extract(epoch FROM arrived_at - at) * 1000 AS ms FROM $table WHERE id <> 0) d" | tr '|' ' '
}

bench_delay() {
    echo "== realtime delay, edge commit -> row on the cloud, 1000 rows/s for ${DURATION} s per round =="
    rounds realtime_delay reset_tables delay_native delay_edgesync
    report 7 "realtime delay p99 at 1000 rows/s: edgesync / native" "$(med delay_edgesync 2)" "$(med delay_native 2)" ms "<= 1.5"
    echo "     (p50: edgesync $(med delay_edgesync 1) ms, native $(med delay_native 1) ms)"
}

# --- the run -----------------------------------------------------------------

setup_nodes
echo "edgesync $(val "$PORT_A" "SELECT extversion FROM pg_extension WHERE extname = 'edgesync'") on $("$BINDIR/postgres" --version)," \
    "synchronous_commit ${BENCH_SYNC_COMMIT:-off}; $ROUNDS round(s), backlog $BACKLOG, ${DURATION} s pgbench runs; medians of the rounds, ratio = measured / baseline"
header
wanted 4 && bench_local_inserts
wanted 1 2 3 5 6 7 && setup_peer
wanted 1 2 5 && bench_catch_up
wanted 6 && bench_bytes
wanted 3 && bench_replicating_inserts
wanted 7 && bench_delay
echo
echo "== summary (bars from issue 11; PASS/MISS is information, not a failure) =="
header
printf '%s\n' "${SUMMARY[@]}" | sort -n
