"""Traffic probe run inside a workload network namespace by test/helpers/netns.ts.

Listens on UDP 7000, TCP 7001 and raw IP protocol 253 (IPv4 and IPv6) and records every
token it receives. Commands arrive as JSON lines on stdin, replies leave as JSON lines on
stdout with the same "id":
  {"op": "send", "proto": "udp"|"raw", "dst": IP, "token": T[, "dstopts": true]} -> {"ok": true}
  {"op": "wait", "token": T, "timeout_ms": N}                      -> {"ok": received}
  {"op": "tcp", "dst": IP, "timeout_ms": N}                        -> {"ok": connected}
  {"op": "flood", "dst": IP, "token": T, "rate": HZ, "duration_ms": N} -> {"sent": n}
      (until stopped, or N ms at the most)
  {"op": "stop", "token": T}                                      -> {"ok": true}
  {"op": "count", "prefix": P}                                     -> {"count": n}
"""
import json
import socket
import sys
import threading
import time

UDP_PORT = 7000
TCP_PORT = 7001
RAW_PROTO = 253

received = []
cond = threading.Condition()
stopped_floods = set()
out_lock = threading.Lock()


def record(data):
    with cond:
        received.append(data.decode(errors="replace"))
        cond.notify_all()


def udp_listener():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", UDP_PORT))
    return s, lambda: s.recv(65535)


def raw_listener(family):
    s = socket.socket(family, socket.SOCK_RAW, RAW_PROTO)

    def read():
        data = s.recv(65535)
        if family == socket.AF_INET:  # IPv4 raw sockets deliver the IP header too
            data = data[(data[0] & 0x0F) * 4:]
        return data

    return s, read


def tcp_listener():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", TCP_PORT))
    s.listen(64)
    return s


def serve(read):
    while True:
        record(read())


def accept_forever(s):
    while True:
        conn, _ = s.accept()
        conn.close()


def family_of(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


# An IPv6 destination options header holding only padding (the kernel fills in "next header").
DSTOPTS = bytes([0, 0, 1, 4, 0, 0, 0, 0])


def send(proto, dst, token, dstopts=False):
    family = family_of(dst)
    if proto == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        address = (dst, UDP_PORT)
    else:
        s = socket.socket(family, socket.SOCK_RAW, RAW_PROTO)
        address = (dst, 0)
    ancillary = [(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, DSTOPTS)] if dstopts else []
    s.sendmsg([token.encode()], ancillary, 0, address)
    s.close()


def wait(token, timeout_ms):
    deadline = time.monotonic() + timeout_ms / 1000
    with cond:
        while token not in received:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(left)
    return True


def tcp(dst, timeout_ms):
    try:
        socket.create_connection((dst, TCP_PORT), timeout=timeout_ms / 1000).close()
        return True
    except OSError:
        return False


def flood(dst, token, rate, duration_ms):
    s = socket.socket(family_of(dst), socket.SOCK_DGRAM)
    start = time.monotonic()
    sent = 0
    while True:
        now = time.monotonic()
        if now - start >= duration_ms / 1000 or token in stopped_floods:
            break
        s.sendto(("%s-%d" % (token, sent)).encode(), (dst, UDP_PORT))
        sent += 1
        pause = start + sent / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    s.close()
    return sent


def handle(cmd):
    op = cmd["op"]
    if op == "send":
        send(cmd["proto"], cmd["dst"], cmd["token"], cmd.get("dstopts", False))
        return {"ok": True}
    if op == "wait":
        return {"ok": wait(cmd["token"], cmd["timeout_ms"])}
    if op == "tcp":
        return {"ok": tcp(cmd["dst"], cmd["timeout_ms"])}
    if op == "flood":
        return {"sent": flood(cmd["dst"], cmd["token"], cmd["rate"], cmd["duration_ms"])}
    if op == "stop":
        stopped_floods.add(cmd["token"])
        return {"ok": True}
    if op == "count":
        with cond:
            return {"count": sum(1 for t in received if t.startswith(cmd["prefix"]))}
    raise ValueError("unknown op %r" % op)


def reply(message):
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def run(cmd):
    try:
        result = handle(cmd)
    except Exception as err:  # reported to the test, which fails with the message
        result = {"error": repr(err)}
    result["id"] = cmd.get("id")
    reply(result)


def main():
    readers = [udp_listener(), raw_listener(socket.AF_INET), raw_listener(socket.AF_INET6)]
    for _, read in readers:
        threading.Thread(target=serve, args=(read,), daemon=True).start()
    threading.Thread(target=accept_forever, args=(tcp_listener(),), daemon=True).start()
    reply({"ready": True})
    for line in sys.stdin:
        if line.strip():
            # Each command in its own thread: a flood or a wait must not block other commands.
            threading.Thread(target=run, args=(json.loads(line),), daemon=True).start()


if __name__ == "__main__":
    main()
