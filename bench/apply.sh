#!/usr/bin/env bash
# The cloud's apply on its own: edgesync.apply_batch of real 10k-row
# batches, timed on one node, with no forwarder, network or decoding in the
# measurement.
#
#   capture (once; kept in $APPLY_BENCH_DIR/batches.copy): an edge writes
#     10k single-row transactions of inserts, then of updates, then of
#     deletes, into a table without a conflict policy and into a
#     last_writer_wins table, and pushes each run (on_demand, sync_now); the
#     cloud keeps every batch it is sent, labelled plain|lww . insert|update|delete.
#   replay: a fresh node applies them in order, ROUNDS times (each round
#     from empty tables and a new origin), and prints the median ms per
#     label, commit included: wall-clock time, and the CPU time of the
#     applying backend (what a busy machine disturbs least).
#
#   PROFILE=lww.update (a label): instead of timing, applies that label's
#     batches PROFILE_ROUNDS times under `perf record` (software clock) of
#     the applying backend and prints the top of its report.
#
# Needs PG_CONFIG (PostgreSQL 18 with edgesync installed) and PG_USER.
set -euo pipefail

BINDIR="$("${PG_CONFIG:?set PG_CONFIG}" --bindir)"
PG_USER="${PG_USER:-postgres}"
DIR="${APPLY_BENCH_DIR:-/tmp/edgesync-apply-bench}"
ROUNDS="${ROUNDS:-5}"
ROWS="${APPLY_BENCH_ROWS:-10000}"
PROFILE="${PROFILE:-}"
PROFILE_ROUNDS="${PROFILE_ROUNDS:-5}"
PORT_EDGE=$((20000 + RANDOM % 20000))
PORT_CLOUD=$((PORT_EDGE + 1))
LABELS="plain.insert plain.update plain.delete lww.insert lww.update lww.delete"

as_pg() { if [ "$(id -u)" -eq 0 ]; then sudo -n -u "$PG_USER" -- "$@"; else "$@"; fi; }
q() { local port="$1"; shift; PGOPTIONS='--client-min-messages=warning' "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
val() { q "$1" -tAc "$2"; }

node() { # name port
    rm -rf "${DIR:?}/$1"
    as_pg "$BINDIR/initdb" -D "$DIR/$1" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    cat >> "$DIR/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/$1'
shared_preload_libraries = 'edgesync'
wal_level = logical
synchronous_commit = off
max_wal_size = '4GB'
shared_buffers = '512MB'
CONF
    as_pg "$BINDIR/pg_ctl" -D "$DIR/$1" -l "$DIR/$1.log" -w start >/dev/null
}

stop_nodes() {
    for n in edge cloud; do
        [ -f "$DIR/$n/postmaster.pid" ] && as_pg "$BINDIR/pg_ctl" -D "$DIR/$n" -m immediate -w stop >/dev/null 2>&1 || true
    done
}
trap stop_nodes EXIT
mkdir -p "$DIR"
[ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$DIR"

TABLE_DDL="(id bigint PRIMARY KEY, sensor int NOT NULL, value float8 NOT NULL, at timestamptz NOT NULL)"

# The cloud's tables: es_lww under last_writer_wins, enrolled `up` only so
# that no feed worker decodes the applied rows while they are timed.
cloud_tables() { # port
    q "$1" -c "CREATE EXTENSION edgesync; SELECT edgesync.create_node('cloud', 2);
        CREATE TABLE es_plain $TABLE_DDL; CREATE TABLE es_lww $TABLE_DDL;
        SELECT edgesync.add_table('es_plain', sync => 'up'); SELECT edgesync.add_table('es_lww', sync => 'up');
        SELECT edgesync.set_conflict_policy('es_lww', 'last_writer_wins');
        CREATE TABLE bench_batch (n bigserial PRIMARY KEY, label text, b bytea NOT NULL)" >/dev/null
}

# One run of ROWS single-row transactions on the edge, pushed; the batches
# the cloud kept for it get `label`.
edge_run() { # table, statement on i, label
    q "$PORT_EDGE" -c "DO \$\$ BEGIN FOR i IN 1..$ROWS LOOP $2; COMMIT; END LOOP; END \$\$" >/dev/null
    q "$PORT_EDGE" -c "SELECT edgesync.sync_now('cloud')" >/dev/null
    q "$PORT_CLOUD" -c "UPDATE bench_batch SET label = '$3' WHERE label IS NULL" >/dev/null
}

capture() {
    node edge "$PORT_EDGE"
    node cloud "$PORT_CLOUD"
    cloud_tables "$PORT_CLOUD"
    # the cloud keeps what it is sent, then applies it as usual
    q "$PORT_CLOUD" -c "CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login;
        SELECT edgesync.register_edge('edge', 'edge_login');
        CREATE OR REPLACE FUNCTION edgesync.apply_batch(batch bytea) RETURNS pg_lsn LANGUAGE sql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS \$\$ INSERT INTO public.bench_batch (b) VALUES (batch); SELECT pg_lsn '0/0' + edgesync._apply_batch(batch) \$\$" >/dev/null
    q "$PORT_EDGE" -c "CREATE EXTENSION edgesync; SELECT edgesync.create_node('edge', 1);
        CREATE TABLE es_plain $TABLE_DDL; CREATE TABLE es_lww $TABLE_DDL;
        SELECT edgesync.add_table('es_plain', sync => 'up'); SELECT edgesync.add_table('es_lww', sync => 'both');" >/dev/null
    q "$PORT_EDGE" -c "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port=$PORT_CLOUD dbname=postgres user=edge_login', mode => 'on_demand')" >/dev/null
    q "$PORT_EDGE" -c "SELECT edgesync.sync_now('cloud')" >/dev/null
    q "$PORT_CLOUD" -c "DELETE FROM bench_batch" >/dev/null
    for t in plain lww; do
        edge_run "es_$t" "INSERT INTO es_$t VALUES (i, i % 100, random(), now())" "$t.insert"
        edge_run "es_$t" "UPDATE es_$t SET value = value + 1, at = now() WHERE id = i" "$t.update"
        edge_run "es_$t" "DELETE FROM es_$t WHERE id = i" "$t.delete"
    done
    q "$PORT_CLOUD" -c "DELETE FROM bench_batch WHERE length(b) < 64" >/dev/null # batches of no transaction
    q "$PORT_CLOUD" -c "SELECT label, count(*) AS batches, sum(length(b)) AS bytes FROM bench_batch GROUP BY 1 ORDER BY min(n)"
    as_pg touch "$DIR/batches.copy"
    q "$PORT_CLOUD" -c "COPY (SELECT n, label, b FROM bench_batch ORDER BY n) TO '$DIR/batches.copy'"
    stop_nodes
}

# A fresh cloud holding the captured batches.
replay_node() {
    node cloud "$PORT_CLOUD"
    cloud_tables "$PORT_CLOUD"
    q "$PORT_CLOUD" -c "COPY bench_batch (n, label, b) FROM '$DIR/batches.copy'" >/dev/null
}

# SQL that empties the tables and forgets the sender's progress.
# (the tombstone table emptied to no pages: a remote insert skips the
# tombstone lookup only then, as on a node that never deleted)
RESET_SQL="TRUNCATE es_plain, es_lww, edgesync.tombstone, edgesync.conflict_log;
    SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = 'edgesync_edge';"

# psql script lines applying every batch of `label`, each in its own transaction.
apply_lines() { # label
    for n in $(val "$PORT_CLOUD" "SELECT n FROM bench_batch WHERE label = '$1' ORDER BY n"); do
        echo "SELECT edgesync.apply_batch(b) IS NOT NULL AS applied FROM bench_batch WHERE n = $n;"
    done
}

# The CPU time this backend has used, in ns (the kernel's schedstat): a
# batch's apply on a busy machine is told by it better than by the clock.
CPU_NOW="pg_catalog.split_part(pg_catalog.pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint"

# One round over both tables: reset, then every label in order; per batch
# a line "label|wall ms|cpu ms" (commit included in both).
round_script() {
    echo "$RESET_SQL"
    for l in $LABELS; do
        apply_lines "$l" | while read -r apply; do
            echo "SELECT $CPU_NOW AS cpu0, pg_catalog.clock_timestamp() AS t0 \\gset"
            echo "$apply"
            echo "SELECT '$l', round(extract(epoch FROM pg_catalog.clock_timestamp() - :'t0') * 1000, 3), round(($CPU_NOW - :cpu0) / 1e6, 3);"
        done
    done
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

replay() {
    replay_node
    local script="$DIR/round.sql" out="$DIR/times"
    round_script > "$script"
    : > "$out"
    for r in $(seq "$ROUNDS"); do
        # summed per label and round: "label round wall cpu"
        q "$PORT_CLOUD" -t -A -F ' ' -f "$script" | awk -v r="$r" '
            /^(plain|lww)\./ { w[$1] += $2; c[$1] += $3 } END { for (l in w) print l, r, w[l], c[l] }' >> "$out"
    done
    echo "apply_batch, ms per label, median of $ROUNDS rounds ($ROWS single-row transactions each; commit included):"
    printf '  %-14s %8s %8s\n' label wall cpu
    for l in $LABELS; do
        printf '  %-14s %8.1f %8.1f\n' "$l" "$(awk -v l="$l" '$1 == l { print $3 }' "$out" | median)" \
            "$(awk -v l="$l" '$1 == l { print $4 }' "$out" | median)"
    done
}

# Apply the profiled label's batches PROFILE_ROUNDS times under perf,
# which samples only while they apply (enabled through its control fifo).
profile() {
    replay_node
    local table="${PROFILE%%.*}" script="$DIR/profile.sql" prep ctl="$DIR/perf.ctl" ack="$DIR/perf.ack"
    # the rows an update or delete needs are applied first, not sampled
    case "$PROFILE" in
        *.insert) prep="" ;;
        *.update) prep="$table.insert" ;;
        *.delete) prep="$table.insert $table.update" ;;
    esac
    rm -f "$ctl" "$ack"
    mkfifo "$ctl" "$ack"
    {
        for _ in $(seq "$PROFILE_ROUNDS"); do
            echo "$RESET_SQL"
            for l in $prep; do apply_lines "$l"; done
            # blocks until perf listens, and until it has enabled sampling
            echo "\\! echo enable > $ctl && read done < $ack"
            apply_lines "$PROFILE"
            echo "\\! echo disable > $ctl && read done < $ack"
        done
    } > "$script"
    PGAPPNAME=apply-profile q "$PORT_CLOUD" -t -f "$script" >/dev/null &
    local psql_pid=$! deadline=$((SECONDS + 30)) backend=""
    until [ -n "$backend" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "bench: the profiled session did not start" >&2; exit 1; }
        backend=$(val "$PORT_CLOUD" "SELECT pid FROM pg_stat_activity WHERE application_name = 'apply-profile'")
    done
    perf record -e cpu-clock -F "${PROFILE_HZ:-2000}" ${PROFILE_CALLS:--g} -D -1 --control "fifo:$ctl,$ack" -o "$DIR/perf.data" -p "$backend" 2>/dev/null &
    local perf_pid=$!
    wait "$psql_pid"
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    perf report -i "$DIR/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -"${PROFILE_TOP:-40}"
}

if [ ! -s "$DIR/batches.copy" ] || [ -n "${RECAPTURE:-}" ]; then
    capture
fi
if [ -n "$PROFILE" ]; then profile; else replay; fi
