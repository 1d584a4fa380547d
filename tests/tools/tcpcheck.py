#!/usr/bin/env python3
"""Small TCP peers for the LAN-proxy tests (tests/netns/lan.rs).

Each subcommand is one side of one check; results go to stdout as one line of
JSON (clients) so the Rust test can assert on them. Servers run until killed.

  halfclose-server PORT         read to EOF, then answer sha256(data) and close
  halfclose-client HOST PORT N  send N bytes, shut down writing, read the answer
  rst-server PORT MODE          MODE=send-rst: reset every connection after 0.3 s
                                MODE=expect-rst: report (to a file) how each ended
  rst-client HOST PORT MODE     MODE=send-rst: connect, send, reset
                                MODE=expect-rst: connect, wait for the reset
  echo-server PORT              echo every connection (many at once)
  many-client HOST PORT SRC:N,.. hold N connections per source open at once,
                                echo on each (SRC IPv4 or IPv6)
  flood HOST PORT SRC:N,..      open N connections per source (IPv4 or IPv6;
                                a source gives up after 3 failures in a row),
                                print how many connected per source, hold
                                them until stdin closes
  whoami-server PORT            tell each connection its peer's address, close
  whoami HOST PORT              connect, print the address the server saw
  hold HOST PORT N SECS         open N connections, echo one byte on each,
                                print "ready", keep them idle for SECS
  latency HOST PORT N           N connections one after another: connect, echo
                                16 bytes, close; median and p99 in ms
  tls-server PORT CERT KEY DELAY  accept, wait DELAY s, TLS handshake, echo
  tls-client HOST PORT SECS     TLS handshake, then send/receive for SECS
"""
import hashlib
import json
import os
import resource
import selectors
import socket
import ssl
import struct
import sys
import threading
import time


def listener(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(4096)
    return s


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(port, handle):
    s = listener(port)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def halfclose_server(port):
    def handle(c):
        h = hashlib.sha256()
        while True:
            b = c.recv(65536)
            if not b:
                break
            h.update(b)
        c.sendall(h.hexdigest().encode())
        c.close()

    serve(port, handle)


def halfclose_client(host, port, n):
    data = os.urandom(n)
    c = socket.create_connection((host, port), timeout=20)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = c.recv(4096)
        if not b:
            break
        reply += b
    print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "reply": reply.decode()}))


def rst_server(port, mode, out):
    def handle(c):
        if mode == "send-rst":
            c.recv(100)
            time.sleep(0.3)
            reset(c)
            return
        c.settimeout(10)
        try:
            while c.recv(4096):
                pass
            how = "fin"
        except ConnectionResetError:
            how = "rst"
        except socket.timeout:
            how = "timeout"
        with open(out, "a") as f:
            f.write(how + "\n")
        c.close()

    serve(port, handle)


def rst_client(host, port, mode):
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(b"hello")
    if mode == "send-rst":
        time.sleep(0.3)
        reset(c)
        print(json.dumps({"sent": "rst"}))
        return
    try:
        b = c.recv(100)
        how = "fin" if not b else "data"
    except ConnectionResetError:
        how = "rst"
    except socket.timeout:
        how = "timeout"
    print(json.dumps({"ended": how}))


def echo_server(port):
    raise_nofile()
    sel = selectors.DefaultSelector()
    s = listener(port)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is s:
                try:
                    c, _ = s.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
            else:
                c = key.fileobj
                try:
                    b = c.recv(65536)
                except (ConnectionError, BlockingIOError):
                    b = b""
                if b:
                    c.sendall(b)
                else:
                    sel.unregister(c)
                    c.close()


def many_client(host, port, spec):
    """spec "SRC:N,SRC:N": from each source address in turn, opens N
    connections, all held open at once; then each sends 16 bytes and expects
    the echo. Reports per source how many echoed and how many failed (the proxy
    accepts before it decides, so a refused connection shows as a reset on
    first use, or as a refused connect)."""
    raise_nofile()
    groups = []
    for part in spec.split(","):
        src, n = part.rsplit(":", 1)
        socks, refused = [], 0
        for _ in range(int(n)):
            c = socket.socket(family_of(src), socket.SOCK_STREAM)
            c.bind((src, 0))
            c.settimeout(10)
            try:
                c.connect((host, port))
                socks.append(c)
            except OSError:
                refused += 1
        groups.append((src, socks, refused))
    out = {}
    for src, socks, refused in groups:
        ok, failed = 0, refused
        for i, c in enumerate(socks):
            msg = b"%015d\n" % i
            try:
                c.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    b = c.recv(64)
                    if not b:
                        break
                    got += b
                if got == msg:
                    ok += 1
                else:
                    failed += 1
            except OSError:
                failed += 1
        out[src] = {"echoed": ok, "failed": failed}
    for _, socks, _ in groups:
        for c in socks:
            c.close()
    print(json.dumps(out))


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def flood(host, port, spec):
    """Opens the connections of spec ("SRC:N,SRC:N"), prints
    {"SRC": {"connected": n, "failed": n}, ...} and holds them until stdin
    closes; then closes them all."""
    raise_nofile()
    socks, out = [], {}
    for part in spec.split(","):
        src, n = part.rsplit(":", 1)
        ok = failed = 0
        streak = 0
        for _ in range(int(n)):
            if streak >= 3:
                # Nothing gets through from here: count the rest as failed.
                failed += 1
                continue
            c = socket.socket(family_of(src), socket.SOCK_STREAM)
            c.bind((src, 0))
            c.settimeout(1)
            try:
                c.connect((host, port))
                socks.append(c)
                ok += 1
                streak = 0
            except OSError:
                c.close()
                failed += 1
                streak += 1
        out[src] = {"connected": ok, "failed": failed}
    print(json.dumps(out), flush=True)
    sys.stdin.read()
    for c in socks:
        c.close()


def whoami_server(port):
    def handle(c):
        peer = c.getpeername()[0]
        if peer.startswith("::ffff:"):
            peer = peer[len("::ffff:"):]
        try:
            c.sendall(peer.encode() + b"\n")
        except OSError:
            pass
        c.close()

    serve(port, handle)


def whoami(host, port):
    try:
        c = socket.create_connection((host, port), timeout=3)
        got = b""
        while not got.endswith(b"\n"):
            b = c.recv(100)
            if not b:
                break
            got += b
        c.close()
        print(json.dumps({"seen": got.decode().strip()}))
    except OSError as e:
        print(json.dumps({"error": str(e)}))


def hold(host, port, n, secs):
    raise_nofile()
    socks = []
    for _ in range(n):
        c = socket.create_connection((host, port), timeout=10)
        c.sendall(b"x")
        if c.recv(1) != b"x":
            raise SystemExit("no echo")
        socks.append(c)
    print("ready", flush=True)
    time.sleep(secs)
    for c in socks:
        c.close()


def latency(host, port, n):
    conn, first = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        c = socket.create_connection((host, port), timeout=10)
        t1 = time.perf_counter()
        c.sendall(b"0123456789abcdef")
        got = b""
        while len(got) < 16:
            got += c.recv(16)
        t2 = time.perf_counter()
        c.close()
        conn.append((t1 - t0) * 1000)
        first.append((t2 - t0) * 1000)
    conn.sort()
    first.sort()
    q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
    print(json.dumps({"connect_ms": [q(conn, 0.5), q(conn, 0.99)],
                      "first_echo_ms": [q(first, 0.5), q(first, 0.99)]}))


def tls_server(port, cert, key, delay):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def handle(c):
        time.sleep(delay)
        try:
            t = ctx.wrap_socket(c, server_side=True)
            while True:
                b = t.recv(65536)
                if not b:
                    break
                t.sendall(b)
            t.close()
        except (OSError, ssl.SSLError):
            c.close()

    serve(port, handle)


def tls_client(host, port, secs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t0 = time.time()
    raw = socket.create_connection((host, port), timeout=20)
    c = ctx.wrap_socket(raw)
    handshake = time.time() - t0
    chunk = os.urandom(16384)
    moved = 0
    while time.time() - t0 < handshake + secs:
        c.sendall(chunk)
        got = 0
        while got < len(chunk):
            b = c.recv(len(chunk) - got)
            if not b:
                raise SystemExit("server closed")
            got += len(b)
        moved += got
    version = c.version()
    c.close()
    print(json.dumps({"handshake_s": handshake, "echoed": moved, "version": version}))


def main(a):
    cmd = a[0]
    if cmd == "halfclose-server":
        halfclose_server(int(a[1]))
    elif cmd == "halfclose-client":
        halfclose_client(a[1], int(a[2]), int(a[3]))
    elif cmd == "rst-server":
        rst_server(int(a[1]), a[2], a[3] if len(a) > 3 else "/dev/null")
    elif cmd == "rst-client":
        rst_client(a[1], int(a[2]), a[3])
    elif cmd == "echo-server":
        echo_server(int(a[1]))
    elif cmd == "many-client":
        many_client(a[1], int(a[2]), a[3])
    elif cmd == "flood":
        flood(a[1], int(a[2]), a[3])
    elif cmd == "whoami-server":
        whoami_server(int(a[1]))
    elif cmd == "whoami":
        whoami(a[1], int(a[2]))
    elif cmd == "hold":
        hold(a[1], int(a[2]), int(a[3]), float(a[4]))
    elif cmd == "latency":
        latency(a[1], int(a[2]), int(a[3]))
    elif cmd == "tls-server":
        tls_server(int(a[1]), a[2], a[3], float(a[4]))
    elif cmd == "tls-client":
        tls_client(a[1], int(a[2]), float(a[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
