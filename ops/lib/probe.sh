# shellcheck shell=bash
# Health probes for ops/stack. Sourced, not executed.
#
# kafka_protocol_probe HOST PORT
#   Speaks the Kafka wire protocol with python3's standard library (no venv, no JVM start):
#   ApiVersions v0, then Metadata v4 (supported by Kafka 3.x and 4.x alike). Succeeds only if
#   the broker answers and lists itself at HOST:PORT. Prints a one-line summary.
#   Exit codes: 0 healthy, 1 not answering / not ready, 3 python3 is not available.
# redis_ping HOST PORT
#   Sends PING over bash's /dev/tcp and expects +PONG (needs no redis-cli).
# tcp_port_open HOST PORT
#   True if something accepts TCP connections on HOST:PORT.

tcp_port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

redis_ping() {
  local host=$1 port=$2 reply=
  {
    exec 3<>"/dev/tcp/$host/$port" || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    exec 3>&-
  } 2>/dev/null || return 1
  [[ $reply == +PONG* ]]
}

kafka_protocol_probe() {
  local host=$1 port=$2 py
  py=$(command -v python3 || true)
  [[ -n $py ]] || return 3
  "$py" - "$host" "$port" <<'PY'
import socket
import struct
import sys

host, port = sys.argv[1], int(sys.argv[2])
CLIENT_ID = b"leadflow-ops-stack"


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def call(sock, api_key, version, corr, body):
    header = struct.pack(">hhih", api_key, version, corr, len(CLIENT_ID)) + CLIENT_ID
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    data = recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", data, 0)
    if got != corr:
        raise ValueError("correlation id mismatch")
    return data, 4


def read_str(data, off, nullable=False):
    (n,) = struct.unpack_from(">h", data, off)
    off += 2
    if n < 0:
        return None, off
    return data[off:off + n].decode("utf-8", "replace"), off + n


try:
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.settimeout(3)
        # ApiVersions v0: which Metadata versions does the broker speak?
        data, off = call(sock, 18, 0, 1, b"")
        (err, n) = struct.unpack_from(">hi", data, off)
        off += 6
        if err != 0:
            print(f"ApiVersions error {err}")
            sys.exit(1)
        versions = {}
        for _ in range(n):
            key, lo, hi = struct.unpack_from(">hhh", data, off)
            off += 6
            versions[key] = (lo, hi)
        lo, hi = versions.get(3, (99, -1))
        if not lo <= 4 <= hi:
            print(f"api_versions={len(versions)} (Metadata v4 unsupported: v{lo}-v{hi})")
            sys.exit(0)
        # Metadata v4: all topics (null array), no auto-creation.
        data, off = call(sock, 3, 4, 2, struct.pack(">ib", -1, 0))
        off += 4  # throttle_time_ms
        (nb,) = struct.unpack_from(">i", data, off)
        off += 4
        brokers = []
        for _ in range(nb):
            (node,) = struct.unpack_from(">i", data, off)
            off += 4
            bhost, off = read_str(data, off)
            (bport,) = struct.unpack_from(">i", data, off)
            off += 4
            _rack, off = read_str(data, off)
            brokers.append((node, bhost, bport))
        cluster_id, off = read_str(data, off)
        off += 4  # controller_id
        (ntopics,) = struct.unpack_from(">i", data, off)
except (OSError, ValueError, struct.error, ConnectionError) as exc:
    print(f"not answering: {exc}")
    sys.exit(1)

listed = ",".join(f"{n}@{h}:{p}" for n, h, p in brokers)
print(f"brokers={listed or '-'} cluster_id={cluster_id} topics={ntopics}")
sys.exit(0 if any(p == port for _, _, p in brokers) else 1)
PY
}
