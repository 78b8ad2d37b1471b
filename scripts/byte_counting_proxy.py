#!/usr/bin/env python3
"""A TCP proxy that counts the bytes it carries, for `make bench` (bytes on the wire) and `make demo` (a link to cut).

    byte_counting_proxy.py LISTEN_PORT TARGET_PORT COUNT_FILE

Forwards 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT and keeps the total
of bytes carried both ways in COUNT_FILE as "BYTES UNIX_TIME PORT" (rewritten
every 50 ms), so that a benchmark can read it once it was written after a
measurement ended. PORT is the port it listens on: LISTEN_PORT 0 lets the
OS pick a free one (never one it hands to clients as their ephemeral port),
which is how the benchmark avoids taking a port some client holds; a fixed
LISTEN_PORT is for a link that must come back on the same port (the demo).
The count file appears only once the proxy listens.
"""
import os
import socket
import sys
import threading
import time

listen_port, target_port, count_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
total = 0
lock = threading.Lock()


def pump(src, dst):
    global total
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
            with lock:
                total += len(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(server):
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


# listening before the count file first appears: its presence means "ready"
listener = socket.create_server(("127.0.0.1", listen_port))
port = listener.getsockname()[1]
threading.Thread(target=serve, args=(listener,), daemon=True).start()
while True:
    with lock:
        n = total
    with open(count_file + ".tmp", "w") as f:
        f.write(f"{n} {time.time():.6f} {port}\n")
    os.replace(count_file + ".tmp", count_file)
    time.sleep(0.05)
