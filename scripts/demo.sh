#!/usr/bin/env bash
# edgesync demo: a cloud node, two edge nodes and a read-only edge (a hot
# standby of the cloud), all on loopback:
#   edge1, edge2 --(edgesync forwarders push: sensor_readings, inventory, price; over "the link")--> cloud
#   cloud --(the edges pull its change feed: config, inventory, price)--> edge1, edge2
#   cloud --(streaming)--> edge_ro
# Usage: demo.sh start | stop      (make demo / make demo-stop)
# Needs PG_CONFIG (a PostgreSQL 18 with edgesync installed) and PG_USER.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEMO_DIR="${EDGESYNC_DEMO_DIR:-$ROOT/demo-data}"
PG_USER="${PG_USER:-postgres}"
BINDIR="$("${PG_CONFIG:?set PG_CONFIG}" --bindir)"
# Below the kernel's ephemeral range (32768-60999 by default): a client
# socket of this machine can never be holding one of the demo's ports.
BASE_PORT="${EDGESYNC_DEMO_PORT:-25432}"
DB=iot
NODES=(cloud edge1 edge2 edge_ro)

port_of() {
    case "$1" in
        cloud) echo $((BASE_PORT)) ;; edge1) echo $((BASE_PORT + 1)) ;;
        edge2) echo $((BASE_PORT + 2)) ;; edge_ro) echo $((BASE_PORT + 3)) ;;
        link) echo $((BASE_PORT + 10)) ;;
    esac
}

# "The link": a TCP proxy the edges reach the cloud through, to cut and heal.
# It listens on a fixed port (the edges' conninfo names it, and it must come
# back there after a cut), below the ephemeral range like the nodes' ports.
link_up() {
    rm -f "$DEMO_DIR/link.bytes"
    python3 "$ROOT/scripts/byte_counting_proxy.py" "$(port_of link)" "$(port_of cloud)" "$DEMO_DIR/link.bytes" >/dev/null 2>"$DEMO_DIR/link.log" &
    echo $! > "$DEMO_DIR/link.pid"
    poll_until "the link to listen" link_listening
    echo "link up: edges reach the cloud through port $(port_of link)"
}

# The proxy writes its count file once it listens; one that died (its port
# taken, say) never will, and waiting on would only hide why.
link_listening() {
    if ! kill -0 "$(cat "$DEMO_DIR/link.pid")" 2>/dev/null; then
        echo "demo: the link did not start: $(tail -n 1 "$DEMO_DIR/link.log"); set EDGESYNC_DEMO_PORT" >&2
        exit 1
    fi
    test -s "$DEMO_DIR/link.bytes"
}

link_down() {
    if [ -f "$DEMO_DIR/link.pid" ]; then
        kill "$(cat "$DEMO_DIR/link.pid")" 2>/dev/null || true
        rm -f "$DEMO_DIR/link.pid"
        echo "link cut"
    fi
}

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then sudo -n -u "$PG_USER" -- "$@"; else "$@"; fi
}

psql_on() { # node, then psql arguments
    local node="$1"; shift
    PGOPTIONS='-c client_min_messages=warning' "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$node")" -U postgres -d "$DB" "$@"
}

show() { # title, node, query
    printf '\n=== %s (on %s) ===\n' "$1" "$2"
    psql_on "$2" -P pager=off -P null='∅' -c "$3"
}

# Poll until the command succeeds, at most 60 s; then show the logs and fail.
poll_until() { # description, command...
    local what="$1" deadline=$((SECONDS + 60)); shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "demo: timed out waiting for $what" >&2
            tail -n 20 "$DEMO_DIR"/*.log >&2
            exit 1
        fi
        sleep 0.2
    done
}

returns_true() { [ "$(psql_on "$1" -tAc "$2" 2>/dev/null)" = "t" ]; }
same_on_both() { [ "$(psql_on "$1" -tAc "$3" 2>/dev/null)" = "$(psql_on "$2" -tAc "$3" 2>/dev/null)" ]; }

wait_for() { poll_until "$1" returns_true "$2" "$3"; }          # description, node, query returning t
wait_same() { poll_until "$1" same_on_both "$2" "$3" "$4"; }    # description, node, node, query

stop_all() {
    link_down >/dev/null
    for n in "${NODES[@]}"; do
        if [ -f "$DEMO_DIR/$n/postmaster.pid" ]; then
            as_pg "$BINDIR/pg_ctl" -D "$DEMO_DIR/$n" -m fast -w stop >/dev/null && echo "stopped $n"
        fi
    done
}

node_conf() { # node
    cat >> "$DEMO_DIR/$1/postgresql.conf" <<CONF

# edgesync demo
port = $(port_of "$1")
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO_DIR/$1'
cluster_name = '$1'
shared_preload_libraries = 'edgesync'
wal_level = logical
track_commit_timestamp = on
wal_receiver_status_interval = 1s
max_slot_wal_keep_size = '1GB'
edgesync.database = '$DB'
CONF
}

start_node() {
    as_pg "$BINDIR/pg_ctl" -D "$DEMO_DIR/$1" -l "$DEMO_DIR/$1.log" -w start >/dev/null
    echo "started $1 on port $(port_of "$1")"
}

# Retail: two stores (edge1, edge2) and head office (the cloud) change
# inventory and prices while the link is down. Both tables travel both
# ways: each store pushes its changes and pulls everyone else's through the
# cloud's feed; edgesync's trigger settles conflicts the same way everywhere.
retail_conflicts() {
    for n in cloud edge1 edge2; do
        psql_on "$n" -c "SELECT edgesync.add_table('inventory', sync => 'both');
                         SELECT edgesync.add_table('price', sync => 'both')" >/dev/null
    done
    # head office and store 1 settle price conflicts by hand; store 2 lets the last writer win
    for n in cloud edge1; do
        psql_on "$n" -c "SELECT edgesync.set_conflict_policy('price', 'manual')" >/dev/null
    done
    psql_on cloud -c "INSERT INTO inventory VALUES ('sku-1', 10, 'delivered'), ('sku-2', 10, 'delivered');
                      INSERT INTO price VALUES ('sku-1', 1.99), ('sku-2', 4.50)"
    for e in edge1 edge2; do
        wait_for "the catalogue at $e" "$e" "SELECT count(*) = 2 FROM price"
    done

    printf '\n--- the stores lose the link; everyone keeps working ---\n'
    link_down
    psql_on edge1 -c "UPDATE inventory SET qty = qty - 3, note = 'sold 3 at the till' WHERE sku = 'sku-1';
                      UPDATE price SET price = 1.79 WHERE sku = 'sku-2'"
    psql_on cloud -c "UPDATE inventory SET qty = 40, note = 'restocked by head office' WHERE sku = 'sku-1';
                      UPDATE price SET price = 4.99 WHERE sku = 'sku-2'"
    printf -- '--- the link is back ---\n'
    link_up
    wait_for "inventory settled at store 1" edge1 "SELECT qty = 40 FROM inventory WHERE sku = 'sku-1'"
    wait_for "inventory settled at store 2, through the cloud" edge2 "SELECT qty = 40 FROM inventory WHERE sku = 'sku-1'"
    wait_for "the price conflict logged at head office" cloud "SELECT count(*) = 1 FROM edgesync.conflicts"
    wait_for "the price conflict logged at store 1" edge1 "SELECT count(*) = 1 FROM edgesync.conflicts"
    for n in cloud edge1 edge2; do
        show "inventory after the link healed (last writer wins)" "$n" "SELECT sku, qty, note FROM inventory ORDER BY sku"
    done
    for n in cloud edge1; do
        show "conflict_log" "$n" \
            "SELECT id, table_name, key->>'sku' AS sku, conflict_type, resolution, status,
                    local_row->>'qty' AS local_qty, remote_row->>'qty' AS remote_qty, kept_row->>'qty' AS kept_qty,
                    local_row->>'price' AS local_price, remote_row->>'price' AS remote_price, local_origin, remote_origin
               FROM edgesync.conflict_log ORDER BY id"
    done
    show "pending conflicts (manual policy on price)" cloud "SELECT id, table_name, key, local_row, remote_row FROM edgesync.conflicts"
    printf '\nHead office takes the store'"'"'s price: SELECT edgesync.resolve_conflict(id, '"'"'apply_remote'"'"')\n'
    psql_on cloud -c "SELECT edgesync.resolve_conflict(id, 'apply_remote') AS kept FROM edgesync.conflicts"
    wait_for "the resolution at store 2" edge2 "SELECT price = 1.79 FROM price WHERE sku = 'sku-2'"
    printf '\nStore 1'"'"'s DBA settles its own log entry: SELECT edgesync.resolve_conflicts('"'"'price'"'"', '"'"'keep_local'"'"')\n'
    psql_on edge1 -c "SELECT edgesync.resolve_conflicts('price', 'keep_local') AS settled"
    for e in edge1 edge2; do
        wait_same "price on the cloud and $e" cloud "$e" \
            "SELECT string_agg(sku || ':' || price || ':' || edgesync_version::text, ',' ORDER BY sku) FROM price"
    done
    for n in cloud edge1 edge2; do
        show "price after resolve_conflict: each version read as its time and node" "$n" \
            "SELECT p.sku, p.price, v.written_at, v.node_name AS written_by, v.prev_written_at AS replaced, v.prev_node_name AS replaced_by
               FROM price p, edgesync.describe_version(p.edgesync_version) v ORDER BY p.sku"
    done
    show "peers of store 2: what it pushed and pulled" edge2 \
        "SELECT peer, direction, state, rows_sent, rows_received, transactions_received, position, head FROM edgesync.peers ORDER BY direction"
}

start() {
    stop_all
    rm -rf "$DEMO_DIR"
    mkdir -p "$DEMO_DIR"
    [ "$(id -u)" -eq 0 ] && chown "$PG_USER" "$DEMO_DIR"
    if ! as_pg test -w "$DEMO_DIR"; then
        echo "demo: $PG_USER cannot write $DEMO_DIR; set EDGESYNC_DEMO_DIR to a directory it can reach" >&2
        exit 1
    fi
    for n in cloud edge1 edge2; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$(port_of "$n")") 2>/dev/null; then
            echo "demo: port $(port_of "$n") is in use; set EDGESYNC_DEMO_PORT" >&2; exit 1
        fi
        as_pg "$BINDIR/initdb" -D "$DEMO_DIR/$n" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
        node_conf "$n"
        start_node "$n"
        "$BINDIR/psql" -X -q -h 127.0.0.1 -p "$(port_of "$n")" -U postgres -d postgres -c "CREATE DATABASE $DB"
        psql_on "$n" <<'SQL'
CREATE EXTENSION edgesync;
CREATE TABLE sensor_readings (
    edge       text        NOT NULL,
    sensor_id  int         NOT NULL,
    reading_at timestamptz NOT NULL,
    value      float8      NOT NULL,
    PRIMARY KEY (edge, sensor_id, reading_at)
);
CREATE TABLE config (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE inventory (sku text PRIMARY KEY, qty int NOT NULL, note text);
CREATE TABLE price (sku text PRIMARY KEY, price numeric(10,2) NOT NULL);
SQL
        psql_on "$n" -c "SELECT edgesync.create_node('$n')" >/dev/null
    done

    # edges -> cloud: readings, pushed by edgesync's forwarders (the edge
    # dials the cloud); cloud -> edges: configuration, pulled from the
    # cloud's change feed in the same rounds
    link_up
    psql_on cloud -c "CREATE ROLE edge_login LOGIN; GRANT edgesync_peer TO edge_login;
                      SELECT edgesync.register_edge('edge1', 'edge_login'); SELECT edgesync.register_edge('edge2', 'edge_login');
                      SELECT edgesync.add_table('sensor_readings', sync => 'up');
                      SELECT edgesync.add_table('config', sync => 'down')" >/dev/null
    for e in edge1 edge2; do
        psql_on "$e" -c "SELECT edgesync.add_table('sensor_readings', sync => 'up');
                         SELECT edgesync.add_table('config', sync => 'down')" >/dev/null
        # its own transaction: a slot cannot be created in one that already wrote
        psql_on "$e" -c "SELECT edgesync.add_peer('cloud', 'host=127.0.0.1 port=$(port_of link) dbname=$DB user=edge_login connect_timeout=5', mode => 'realtime')" >/dev/null
        # a new edge starts at the feed's head: wait for its first pull before writing what it must get
        wait_for "$e's first pull" "$e" "SELECT position IS NOT NULL FROM edgesync.peers WHERE direction = 'pull'"
    done
    psql_on cloud -c "INSERT INTO config VALUES ('sample_interval', '10s'), ('alert_threshold', '80')"

    # the read-only edge: a hot standby of the cloud
    as_pg "$BINDIR/pg_basebackup" -h 127.0.0.1 -p "$(port_of cloud)" -U postgres -D "$DEMO_DIR/edge_ro" -R -X stream -C -S edge_ro_slot --no-sync
    node_conf edge_ro
    start_node edge_ro

    for e in edge1 edge2; do
        wait_for "config on $e" "$e" "SELECT count(*) = 2 FROM config"
    done

    # An hour of readings: 8 sensors per edge, one reading every 10 s.
    for e in edge1 edge2; do
        psql_on "$e" -c "INSERT INTO sensor_readings
            SELECT '$e', s, now() - make_interval(secs => 10 * t),
                   round((20 + 5 * sin(t / 30.0 + s) + random())::numeric, 2)
            FROM generate_series(1, 8) s, generate_series(0, 359) t"
    done
    wait_for "readings on the cloud" cloud "SELECT count(*) = 2 * 8 * 360 FROM sensor_readings"
    show "peers: edge1 pushing to the cloud" edge1 \
        "SELECT peer, mode, state, connected, consecutive_failures, pending_changes, rows_sent, bytes_sent_raw, bytes_sent_compressed,
                round(clock_skew_seconds, 3) AS skew_s FROM edgesync.peers WHERE direction = 'push'"

    # Cut the link: the edges keep writing, their slots keep the changes.
    link_down
    for e in edge1 edge2; do
        psql_on "$e" -c "INSERT INTO sensor_readings
            SELECT '$e', s, now() - make_interval(secs => 10 * t) - interval '1 hour', 20 + random()
            FROM generate_series(1, 8) s, generate_series(0, 359) t"
    done
    wait_for "edge1 to notice the cut" edge1 "SELECT consecutive_failures > 0 FROM edgesync.peers WHERE direction = 'push'"
    show "peers while the link is down" edge1 \
        "SELECT peer, state, connected, consecutive_failures, pending_changes, pending_bytes, round(lag_seconds::numeric, 1) AS lag_s,
                next_attempt - now() AS retry_in, last_error FROM edgesync.peers WHERE direction = 'push'"
    show "health while the link is down (peer rows)" edge1 \
        "SELECT component, object, status, metric, value, detail FROM edgesync.health WHERE component = 'peer' ORDER BY metric"

    # Heal it: the forwarders reconnect by themselves and drain.
    link_up
    wait_for "the backlog on the cloud" cloud "SELECT count(*) = 2 * 8 * 720 FROM sensor_readings"
    wait_for "edge1 to recover" edge1 "SELECT consecutive_failures = 0 AND pending_changes = 0 FROM edgesync.peers WHERE direction = 'push'"
    show "peers after the link healed" edge1 \
        "SELECT peer, state, connected, consecutive_failures, pending_changes, last_success, rows_sent FROM edgesync.peers WHERE direction = 'push'"
    wait_for "edge_ro caught up" cloud \
        "SELECT coalesce(bool_and(replay_lag_bytes = 0), false) FROM edgesync.streaming_replication WHERE name = 'edge_ro'"

    # Make some lag to look at: the read-only edge pauses replay while the
    # edges keep sending readings.
    psql_on edge_ro -c "SELECT pg_wal_replay_pause()" >/dev/null
    for e in edge1 edge2; do
        psql_on "$e" -c "INSERT INTO sensor_readings
            SELECT '$e', s, now() + make_interval(secs => t), 20 + random()
            FROM generate_series(1, 8) s, generate_series(1, 3000) t"
    done
    wait_for "the second wave on the cloud" cloud "SELECT count(*) = 2 * 8 * 3720 FROM sensor_readings"
    psql_on cloud -c "CHECKPOINT" >/dev/null

    show "streaming replication (edge_ro paused: replay lag)" cloud \
        "SELECT name, kind, state, sent_lag_bytes, flush_lag_bytes, replay_lag_bytes,
                round(replay_lag_seconds::numeric, 3) AS replay_lag_s FROM edgesync.streaming_replication ORDER BY name"
    show "WAL receiver" edge_ro \
        "SELECT status, sender_host, sender_port, received_lsn, replayed_lsn, replay_lag_bytes,
                round(replay_delay_seconds::numeric, 1) AS replay_delay_s, replay_paused FROM edgesync.wal_receiver"
    show "replication slots" cloud \
        "SELECT slot_name, slot_type, active, retained_wal_bytes, pending_bytes, wal_status, pg_size_pretty(safe_wal_size) AS safe_wal_size, disk_at_risk FROM edgesync.replication_slots ORDER BY 1"
    show "replication slots" edge1 \
        "SELECT slot_name, slot_type, active, retained_wal_bytes, pending_bytes, wal_status, disk_at_risk FROM edgesync.replication_slots ORDER BY 1"
    show "peers: edge1 pushes readings and pulls config" edge1 \
        "SELECT peer, direction, state, rows_sent, rows_received, position, head, pending_bytes FROM edgesync.peers ORDER BY direction"
    printf '\n(health with edgesync.lag_warning_bytes = 1MB so that the paused standby shows)\n'
    show "health" cloud \
        "SET edgesync.lag_warning_bytes = '1MB'; SELECT component, object, status, metric, value, threshold, detail FROM edgesync.health ORDER BY array_position(array['critical','warning','ok'], status), component, object, metric"

    psql_on edge_ro -c "SELECT pg_wal_replay_resume()" >/dev/null
    wait_for "edge_ro caught up again" cloud \
        "SELECT coalesce(bool_and(replay_lag_bytes = 0), false) FROM edgesync.streaming_replication WHERE name = 'edge_ro'"
    show "health after edge_ro resumed (not ok only)" cloud \
        "SELECT component, object, status, metric, value FROM edgesync.health WHERE status <> 'ok'
         UNION ALL SELECT 'all', count(*)::text, 'ok', 'checks', NULL FROM edgesync.health WHERE status = 'ok'"
    show "diagnose" cloud "SELECT * FROM edgesync.diagnose()"

    show "analytics: the last hour per sensor" cloud \
        "SELECT edge, sensor_id, count(*) AS readings, round(avg(value)::numeric, 2) AS avg,
                min(value) AS min, max(value) AS max
           FROM sensor_readings WHERE reading_at > now() - interval '1 hour' AND reading_at <= now()
          GROUP BY edge, sensor_id ORDER BY edge, sensor_id"
    show "the same readings, read on the read-only edge" edge_ro \
        "SELECT edge, count(*) AS readings FROM sensor_readings GROUP BY edge ORDER BY edge"

    retail_conflicts

    cat <<TXT

The nodes keep running. Connect with psql:
  cloud   : $BINDIR/psql -h 127.0.0.1 -p $(port_of cloud) -U postgres $DB
  edge1   : $BINDIR/psql -h 127.0.0.1 -p $(port_of edge1) -U postgres $DB
  edge2   : $BINDIR/psql -h 127.0.0.1 -p $(port_of edge2) -U postgres $DB
  edge_ro : $BINDIR/psql -h 127.0.0.1 -p $(port_of edge_ro) -U postgres $DB   (read-only standby)
Logs: $DEMO_DIR/*.log
Stop them with: make demo-stop
TXT
}

case "${1:-}" in
    start) start ;;
    stop) stop_all ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
