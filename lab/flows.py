#!/usr/bin/env python
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live traffic through a lab's NAT, and what it looked like on arrival.

Each flow runs as processes inside the lab's namespaces and records JSON results:

    tcp4/tcp6  client -> server 203.0.113.20:5001: sequence-numbered stream at a steady rate; the
               server checks every byte arrives in order and notes the peer it sees
    udp4/udp6  client -> server :5002, echoed back: loss, reordering, duplicates, peers
    udpo4/6    client -> server :5004, one way (telemetry, syslog): never answered, so its conntrack
               entry stays NEW for ever; the server counts loss by sequence numbers
    ping4/6    client -> server, ICMP echo: loss
    fwd4/fwd6  server -> 203.0.113.1:8080, the port forward, served at 192.0.2.10:8080 in the client
    tcpu4/6, udpu4/6, pingu4/6   server -> the client's own address, forwarded untranslated (a
               firewall's sessions; the server needs a route to the inside network via the service's
               external address): not among the default kinds

A flow stops by itself after its duration, or on request (its stop file, or SIGTERM to its PID).
Every merged result says bytes sent and received, what was lost, the largest gap between arrivals
(ms) and the peers the receiving side saw: a translated port that changed shows as two peers.

    python3 lab/flows.py start NAME [--kinds tcp,udp,udpo,ping,fwd] [--families 4,6] [--duration 300]
    python3 lab/flows.py status|stop NAME [--table]
    python3 lab/flows.py check NAME [--timeout 2]     # a new connection through the NAT works now

The workers use only Python's standard library; the controller side needs a Lab (nfstate_lab.py).
"""

import argparse
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

KINDS = ("tcp", "udp", "udpo", "ping", "fwd")
UNTRANSLATED_KINDS = ("tcpu", "udpu", "pingu")
# What an untranslated kind is measured as.
MEASURED_AS = {"tcpu": "tcp", "udpu": "udp", "pingu": "ping"}
PORTS = {"tcp": 5001, "udp": 5002, "probe": 5003, "udpo": 5004, "tcpu": 5011, "udpu": 5012}
RECORD = struct.Struct(">Q")
UDP_SIZE = 64
PING_SIZE = 56
PROGRESS_EVERY = 1.0


# ---------------------------------------------------------------------------------------------
# Workers: run inside a namespace, write <dir>/<flow>.<side>.json, stop on file, signal or time.
# ---------------------------------------------------------------------------------------------

def _endpoint(text):
    """'addr:port' with brackets for IPv6, as peers are reported."""
    host, port = text[:2]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class Worker:
    side = "worker"

    def __init__(self, args):
        self.args = args
        self.base = os.path.join(args.dir, "%s.%s" % (args.flow, self.side))
        self.deadline = time.monotonic() + args.duration
        self.stopping = False
        self.errors = []
        self.started = time.time()
        self._next_check = 0.0
        self._next_write = time.monotonic() + PROGRESS_EVERY
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, _signum, _frame):
        self.stopping = True

    def should_stop(self):
        now = time.monotonic()
        if now >= self.deadline:
            self.stopping = True
        elif now >= self._next_check:
            self._next_check = now + 0.05
            if os.path.exists(self.base + ".stop"):
                self.stopping = True
        if now >= self._next_write:
            self._next_write = now + PROGRESS_EVERY
            self.write(running=True)
        return self.stopping

    def ready(self):
        with open(self.base + ".ready", "w") as handle:
            handle.write("%d\n" % os.getpid())

    def write(self, running=False):
        result = self.result()
        result.update({"flow": self.args.flow, "side": self.side, "pid": os.getpid(), "running": running,
                       "errors": list(self.errors), "started": self.started, "updated": time.time()})
        tmp = "%s.json.%d" % (self.base, os.getpid())
        with open(tmp, "w") as handle:
            json.dump(result, handle)
        os.replace(tmp, self.base + ".json")

    def result(self):
        return {}

    def main(self):
        try:
            self.run()
        except Exception as err:  # recorded, never lost: the result file is the only report
            self.errors.append("%s: %s" % (type(err).__name__, err))
        self.write(running=False)
        return 0 if not self.errors else 1


class Gap:
    """Largest interval between consecutive arrivals."""

    def __init__(self):
        self.last = None
        self.max = 0.0

    def arrived(self, now):
        if self.last is not None:
            self.max = max(self.max, now - self.last)
        self.last = now

    @property
    def ms(self):
        return round(self.max * 1000, 1)


class StreamReceiver(Worker):
    """Accepts TCP connections; checks each is the sender's counter stream, in order, complete."""
    side = "recv"

    def run(self):
        listener = socket.socket(_family(self.args.addr), socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.args.addr, self.args.port))
        listener.listen(16)
        self.conns = []
        self.ready()
        while not self.should_stop():
            open_conns = {c["sock"]: c for c in self.conns if not c["closed"]}
            readable, _w, _x = select.select([listener] + list(open_conns), [], [], 0.05)
            now = time.monotonic()
            for sock in readable:
                if sock is listener:
                    conn, peer = listener.accept()
                    self.conns.append({"sock": conn, "peer": _endpoint(peer), "bytes": 0, "buf": b"",
                                       "in_order": True, "gap": Gap(), "closed": False, "clean": False})
                else:
                    self._receive(open_conns[sock], now)
        for conn in self.conns:
            if not conn["closed"]:
                conn["sock"].close()
                conn["closed"] = True
        listener.close()

    def _receive(self, conn, now):
        try:
            data = conn["sock"].recv(65536)
        except OSError as err:
            self.errors.append("%s: %s" % (conn["peer"], err))
            conn["sock"].close()
            conn["closed"] = True
            return
        if not data:
            # The sender's end of stream: tell it how much arrived, then finish.
            try:
                conn["sock"].sendall(RECORD.pack(conn["bytes"]))
                conn["clean"] = True
            except OSError as err:
                self.errors.append("%s: final count: %s" % (conn["peer"], err))
            conn["sock"].close()
            conn["closed"] = True
            return
        conn["gap"].arrived(now)
        first = conn["bytes"] // RECORD.size
        conn["bytes"] += len(data)
        buf = conn["buf"] + data
        count = len(buf) // RECORD.size
        if conn["in_order"] and count:
            expected = struct.pack(">%dQ" % count, *range(first, first + count))
            if buf[:count * RECORD.size] != expected:
                conn["in_order"] = False
                self.errors.append("%s: stream out of order near byte %d" % (conn["peer"], first * RECORD.size))
        conn["buf"] = buf[count * RECORD.size:]

    def result(self):
        conns = getattr(self, "conns", [])
        return {"peers": [c["peer"] for c in conns], "bytes_received": sum(c["bytes"] for c in conns),
                "in_order": all(c["in_order"] for c in conns), "connections": len(conns),
                "completed": bool(conns) and all(c["clean"] for c in conns),
                "max_gap_ms": max([c["gap"].ms for c in conns] or [0.0])}


class StreamSender(Worker):
    """Sends a counter stream (8-byte big-endian record numbers) at a steady rate, then asks the
    receiver how much arrived."""
    side = "send"

    def run(self):
        self.sent = 0
        self.acked = None
        self.local = None
        self.max_stall = 0.0
        sock = socket.create_connection((self.args.addr, self.args.port), timeout=5)
        self.local = _endpoint(sock.getsockname())
        sock.setblocking(False)
        self.ready()
        rate = max(RECORD.size, self.args.rate)
        start = time.monotonic()
        produced = 0
        pending = b""
        last_progress = start
        while not self.should_stop():
            now = time.monotonic()
            due = int(rate * (now - start)) // RECORD.size
            if due > produced and len(pending) < (1 << 20):
                pending += struct.pack(">%dQ" % (due - produced), *range(produced, due))
                produced = due
            if pending:
                try:
                    n = sock.send(pending)
                    pending = pending[n:]
                    self.sent += n
                    last_progress = now
                except BlockingIOError:
                    self.max_stall = max(self.max_stall, now - last_progress)
            readable, _w, _x = select.select([sock], [], [], self.args.interval)
            if readable:
                try:
                    data = sock.recv(64)
                    self.errors.append("receiver closed the stream early" if not data else "unexpected data")
                except OSError as err:
                    self.errors.append("stream broken: %s" % err)
                break
        if not self.errors:
            self._finish(sock, pending)
        sock.close()

    def _finish(self, sock, pending):
        sock.setblocking(True)
        sock.settimeout(5)
        try:
            if pending:
                sock.sendall(pending)
                self.sent += len(pending)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while len(data) < RECORD.size:
                chunk = sock.recv(RECORD.size - len(data))
                if not chunk:
                    break
                data += chunk
            if len(data) == RECORD.size:
                self.acked = RECORD.unpack(data)[0]
            else:
                self.errors.append("no final count from the receiver")
        except OSError as err:
            self.errors.append("closing the stream: %s" % err)

    def result(self):
        return {"bytes_sent": getattr(self, "sent", 0), "acked": getattr(self, "acked", None),
                "local": getattr(self, "local", None), "remote": "%s:%d" % (self.args.addr, self.args.port)
                if ":" not in self.args.addr else "[%s]:%d" % (self.args.addr, self.args.port),
                "max_stall_ms": round(getattr(self, "max_stall", 0.0) * 1000, 1)}


class DatagramEcho(Worker):
    """Receives numbered datagrams, echoes each back, and counts what arrived."""
    side = "recv"

    def run(self):
        self.seen = set()
        self.peers = []
        self.duplicates = self.reordered = 0
        self.highest = -1
        self.gap = Gap()
        sock = socket.socket(_family(self.args.addr), socket.SOCK_DGRAM)
        sock.bind((self.args.addr, self.args.port))
        sock.settimeout(0.05)
        self.ready()
        while not self.should_stop():
            try:
                data, peer = sock.recvfrom(2048)
            except socket.timeout:
                continue
            self.gap.arrived(time.monotonic())
            self.arrived()
            peer = _endpoint(peer)
            if peer not in self.peers:
                self.peers.append(peer)
            seq = RECORD.unpack(data[:RECORD.size])[0]
            if seq in self.seen:
                self.duplicates += 1
            else:
                if seq < self.highest:
                    self.reordered += 1
                self.seen.add(seq)
                self.highest = max(self.highest, seq)
            if not getattr(self, "echo", True):
                continue
            try:
                sock.sendto(data, peer_address(peer))
            except OSError as err:
                self.errors.append("echo to %s: %s" % (peer, err))
        sock.close()

    def arrived(self):
        pass

    def result(self):
        seen = getattr(self, "seen", set())
        return {"received": len(seen), "bytes_received": len(seen) * UDP_SIZE, "peers": getattr(self, "peers", []),
                "duplicates": getattr(self, "duplicates", 0), "reordered": getattr(self, "reordered", 0),
                "highest": getattr(self, "highest", -1), "max_gap_ms": self.gap.ms if hasattr(self, "gap") else 0.0}


class DatagramSink(DatagramEcho):
    """Receives numbered datagrams and answers none of them (a one-way stream); says when the
    first one arrived, so that the flow set knows the stream carries traffic."""

    def run(self):
        self.echo = False
        super().run()

    def arrived(self):
        if not os.path.exists(self.base + ".flowing"):
            with open(self.base + ".flowing", "w") as handle:
                handle.write("%d\n" % os.getpid())


def peer_address(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


class DatagramSender(Worker):
    """Sends numbered datagrams at a steady interval from one socket (one local port) and counts the
    echoes."""
    side = "send"
    expects_echo = True

    def run(self):
        self.sent = 0
        self.echoed = set()
        self.gap = Gap()
        self.local = None
        sock = socket.socket(_family(self.args.addr), socket.SOCK_DGRAM)
        sock.connect((self.args.addr, self.args.port))
        self.local = _endpoint(sock.getsockname())
        sock.setblocking(False)
        next_send = time.monotonic()
        ready_by = next_send + 5
        while not self.should_stop():
            now = time.monotonic()
            if now >= next_send:
                self._send(sock)
                next_send += self.args.interval
                if next_send < now:  # never burst to catch up after a stall
                    next_send = now + self.args.interval
            if self.expects_echo and not self.echoed and now > ready_by:
                self.errors.append("no echo within 5 s")
                break
            readable, _w, _x = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
            if readable:
                self._drain(sock)
        tail = time.monotonic() + (1.0 if self.expects_echo else 0.0)
        while len(self.echoed) < self.sent and time.monotonic() < tail:
            if select.select([sock], [], [], 0.05)[0]:
                self._drain(sock)
        sock.close()

    def _send(self, sock):
        payload = RECORD.pack(self.sent) + b"\x5a" * (UDP_SIZE - RECORD.size)
        try:
            sock.send(payload)
            self.sent += 1
            if self.sent == 1 and not self.expects_echo:
                self.ready()
        except OSError as err:
            self.errors.append("send %d: %s" % (self.sent, err))

    def _drain(self, sock):
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                return
            except OSError as err:
                self.errors.append("receive: %s" % err)
                return
            first = not self.echoed
            self.gap.arrived(time.monotonic())
            self.echoed.add(RECORD.unpack(data[:RECORD.size])[0])
            if first:
                self.ready()

    def result(self):
        return {"sent": getattr(self, "sent", 0), "bytes_sent": getattr(self, "sent", 0) * UDP_SIZE,
                "echoed": len(getattr(self, "echoed", ())), "local": getattr(self, "local", None),
                "echo_max_gap_ms": self.gap.ms if hasattr(self, "gap") else 0.0}


class OneWaySender(DatagramSender):
    """Numbered datagrams that nobody answers (the receiver counts them)."""
    expects_echo = False


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class Pinger(Worker):
    """ICMP echo at a steady interval over a raw socket; counts replies by sequence."""
    side = "send"

    def run(self):
        self.sent = 0
        self.replies = set()
        self.peers = []
        self.gap = Gap()
        v6 = ":" in self.args.addr
        if v6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        ident = os.getpid() & 0xFFFF
        request, reply = (128, 129) if v6 else (8, 0)
        next_send = time.monotonic()
        ready_by = next_send + 5
        while not self.should_stop():
            now = time.monotonic()
            if now >= next_send:
                body = struct.pack("!HHQ", ident, self.sent & 0xFFFF, self.sent) + b"\x5a" * (PING_SIZE - 8)
                packet = struct.pack("!BBH", request, 0, 0) + body
                if not v6:  # the kernel computes ICMPv6 checksums itself, not ICMP ones
                    packet = struct.pack("!BBH", request, 0, _checksum(packet)) + body
                try:
                    sock.sendto(packet, (self.args.addr, 0))
                    self.sent += 1
                except OSError as err:
                    self.errors.append("send %d: %s" % (self.sent, err))
                next_send = max(next_send + self.args.interval, now)
            if not self.replies and now > ready_by:
                self.errors.append("no reply within 5 s")
                break
            if select.select([sock], [], [], max(0.0, next_send - time.monotonic()))[0]:
                self._receive(sock, v6, ident, reply)
        tail = time.monotonic() + 1.0
        while len(self.replies) < self.sent and time.monotonic() < tail:
            if select.select([sock], [], [], 0.05)[0]:
                self._receive(sock, v6, ident, reply)
        sock.close()

    def _receive(self, sock, v6, ident, reply):
        data, peer = sock.recvfrom(4096)
        if not v6:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) < 16 or data[0] != reply:
            return
        got_ident, _seq, counter = struct.unpack("!HHQ", data[4:16])
        if got_ident != ident:
            return
        first = not self.replies
        self.gap.arrived(time.monotonic())
        self.replies.add(counter)
        if peer[0] not in self.peers:
            self.peers.append(peer[0])
        if first:
            self.ready()

    def result(self):
        return {"sent": getattr(self, "sent", 0), "received": len(getattr(self, "replies", ())),
                "peers": getattr(self, "peers", []), "max_gap_ms": self.gap.ms if hasattr(self, "gap") else 0.0}


WORKERS = {"stream-recv": StreamReceiver, "stream-send": StreamSender, "udp-recv": DatagramEcho,
           "udp-send": DatagramSender, "udpo-recv": DatagramSink, "udpo-send": OneWaySender, "ping": Pinger}


def listen_once(addr, port, timeout):
    """Accept one connection, echo one line, leave. Prints 'ready' once listening."""
    listener = socket.socket(_family(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(4)
    listener.settimeout(timeout)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        conn, _peer = listener.accept()
    except socket.timeout:
        return 1
    conn.settimeout(timeout)
    with conn:
        conn.sendall(conn.recv(256))
    return 0


def connect_once(addr, port, timeout):
    """A brand-new TCP connection that carries one round trip within timeout: 0 when it does."""
    probe = b"nfstate-probe %d\n" % os.getpid()
    try:
        with socket.create_connection((addr, port), timeout=timeout) as sock:
            sock.sendall(probe)
            data = b""
            while len(data) < len(probe):
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError as err:
        sys.stderr.write("%s\n" % err)
        return 1
    return 0 if data == probe else 1


# ---------------------------------------------------------------------------------------------
# Controller side: start, watch and stop a set of flows in a lab.
# ---------------------------------------------------------------------------------------------

class FlowError(Exception):
    """Flows could not be started, or stopped in time."""


def _flow_endpoints(lab, kind, family):
    """[(side, role, worker, address, port)] of one flow, receivers first."""
    addr = lab.addresses
    if kind == "tcp":
        return [("recv", "server", "stream-recv", addr["server"][family], PORTS["tcp"]),
                ("send", "client", "stream-send", addr["server"][family], PORTS["tcp"])]
    if kind == "udp":
        return [("recv", "server", "udp-recv", addr["server"][family], PORTS["udp"]),
                ("send", "client", "udp-send", addr["server"][family], PORTS["udp"])]
    if kind == "udpo":
        return [("recv", "server", "udpo-recv", addr["server"][family], PORTS["udpo"]),
                ("send", "client", "udpo-send", addr["server"][family], PORTS["udpo"])]
    if kind == "ping":
        return [("send", "client", "ping", addr["server"][family], 0)]
    if kind == "fwd":
        return [("recv", "client", "stream-recv", addr["client"][family], addr["forward_port"]),
                ("send", "server", "stream-send", addr["external"][family], addr["forward_port"])]
    if kind in ("tcpu", "udpu"):
        worker = "stream" if kind == "tcpu" else "udp"
        return [("recv", "client", worker + "-recv", addr["client"][family], PORTS[kind]),
                ("send", "server", worker + "-send", addr["client"][family], PORTS[kind])]
    if kind == "pingu":
        return [("send", "server", "ping", addr["client"][family], 0)]
    raise FlowError("flow kind %r: one of %s" % (kind, ", ".join(KINDS + UNTRANSLATED_KINDS)))


class FlowSet:
    """A set of flows in one lab (one set at a time: the port forward has one port).

        flows = FlowSet(lab).start()      # returns once every flow carries traffic
        ...                               # flows.results() any time: live figures
        results = flows.stop()            # {name: merged result}; FlowSet.healthy(results)
    """

    def __init__(self, lab, kinds=KINDS, families=(4, 6), duration=120.0, rate=128 * 1024, interval=0.01, only=None):
        self.lab = lab
        self.dir = os.path.join(lab.workdir, "flows")
        self.kinds = tuple(kinds)
        self.families = tuple(int(f) for f in families)
        # The flows to run of kinds x families, by name ("tcp4", "tcpu6"): None runs them all.
        self.only = None if only is None else frozenset(only)
        self.duration = float(duration)
        self.rate = int(rate)
        self.interval = float(interval)
        self.endpoints = []  # dicts: flow, kind, family, side, role, pid
        self.procs = {}

    @property
    def manifest_path(self):
        return os.path.join(self.dir, "manifest.json")

    @classmethod
    def attach(cls, lab):
        """The set last started in this lab (by this or another process)."""
        self = cls(lab)
        try:
            with open(self.manifest_path) as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            raise FlowError("no flows started in lab %s" % lab.name)
        self.kinds, self.families = tuple(manifest["kinds"]), tuple(manifest["families"])
        self.duration, self.endpoints = manifest["duration"], manifest["endpoints"]
        return self

    def _base(self, ep):
        return os.path.join(self.dir, "%s.%s" % (ep["flow"], ep["side"]))

    def _launch(self, ep, worker, address, port, duration):
        argv = [sys.executable, "-S", os.path.abspath(__file__), "_worker", worker, "--flow", ep["flow"],
                "--dir", self.dir, "--addr", address, "--port", str(port), "--duration", str(duration),
                "--rate", str(self.rate), "--interval", str(self.interval)]
        log = open(self._base(ep) + ".log", "w")
        proc = self.lab.popen(ep["role"], argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                              start_new_session=True)
        log.close()
        ep["pid"] = proc.pid
        self.procs[ep["flow"] + "." + ep["side"]] = proc
        # Recorded with the lab's pids, so that the lab's teardown ends the flow too.
        with open(os.path.join(self.lab.workdir, "pids", "flow-%s-%s.pid" % (ep["flow"], ep["side"])), "w") as f:
            f.write("%d\n" % proc.pid)

    def _wait_ready(self, eps, timeout, marker=".ready"):
        deadline = time.monotonic() + timeout
        waiting = list(eps)
        while waiting:
            waiting = [ep for ep in waiting if not os.path.exists(self._base(ep) + marker)]
            for ep in waiting:
                proc = self.procs.get(ep["flow"] + "." + ep["side"])
                if proc is not None and proc.poll() is not None:
                    raise FlowError("%s %s ended before it was ready: %s" % (ep["flow"], ep["side"], self._why(ep)))
            if waiting and time.monotonic() > deadline:
                raise FlowError("not ready after %ss: %s" % (timeout, ", ".join(
                    "%s.%s (%s)" % (ep["flow"], ep["side"], self._why(ep)) for ep in waiting)))
            time.sleep(0.02)

    def _why(self, ep):
        for suffix in (".json", ".log"):
            try:
                with open(self._base(ep) + suffix) as handle:
                    text = handle.read()
            except OSError:
                continue
            if suffix == ".json":
                errors = json.loads(text).get("errors")
                if errors:
                    return "; ".join(errors)
            elif text.strip():
                return text.strip()[-300:]
        return "no output"

    def start(self, timeout=10.0):
        """Start receivers, then senders; return once every flow has carried traffic."""
        if os.path.exists(self.manifest_path):
            try:
                FlowSet.attach(self.lab).stop()
            except FlowError:
                pass
        os.makedirs(self.dir, exist_ok=True)
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        plan = []
        for kind in self.kinds:
            for family in self.families:
                if self.only is not None and "%s%d" % (kind, family) not in self.only:
                    continue
                for side, role, worker, address, port in _flow_endpoints(self.lab, kind, family):
                    ep = {"flow": "%s%d" % (kind, family), "kind": kind, "family": family, "side": side,
                          "role": role, "pid": None}
                    plan.append((ep, worker, address, port))
                    self.endpoints.append(ep)
        try:
            receivers = [p for p in plan if p[0]["side"] == "recv"]
            for ep, worker, address, port in receivers:
                # Receivers outlive their senders, so that the tail of every stream is counted.
                self._launch(ep, worker, address, port, self.duration + 15)
            self._write_manifest()
            self._wait_ready([p[0] for p in receivers], timeout)
            senders = [p for p in plan if p[0]["side"] == "send"]
            for ep, worker, address, port in senders:
                self._launch(ep, worker, address, port, self.duration)
            self._write_manifest()
            self._wait_ready([p[0] for p in senders], timeout)
            # A one-way stream carries traffic once its receiver saw a datagram.
            self._wait_ready([p[0] for p in receivers if p[0]["kind"] == "udpo"], timeout, ".flowing")
        except BaseException:
            self.stop(timeout=5)
            raise
        return self

    def _write_manifest(self):
        manifest = {"lab": self.lab.name, "kinds": list(self.kinds), "families": list(self.families),
                    "duration": self.duration, "endpoints": self.endpoints}
        tmp = self.manifest_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(manifest, handle, indent=1)
        os.replace(tmp, self.manifest_path)

    @property
    def pids(self):
        return [ep["pid"] for ep in self.endpoints if ep.get("pid")]

    def _running(self, ep):
        proc = self.procs.get(ep["flow"] + "." + ep["side"])
        if proc is not None:
            return proc.poll() is None
        try:
            with open("/proc/%d/stat" % ep["pid"]) as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError, TypeError):
            return False

    def _stop_side(self, side, timeout):
        eps = [ep for ep in self.endpoints if ep["side"] == side and ep.get("pid")]
        for ep in eps:
            open(self._base(ep) + ".stop", "w").close()
        deadline = time.monotonic() + timeout
        while any(self._running(ep) for ep in eps) and time.monotonic() < deadline:
            time.sleep(0.02)
        for ep in eps:
            if self._running(ep):
                try:
                    os.kill(ep["pid"], signal.SIGKILL)
                except OSError:
                    pass
            proc = self.procs.get(ep["flow"] + "." + ep["side"])
            if proc is not None:
                proc.wait()
            try:
                os.unlink(os.path.join(self.lab.workdir, "pids", "flow-%s-%s.pid" % (ep["flow"], ep["side"])))
            except OSError:
                pass

    def stop(self, timeout=10.0):
        """Stop senders (they drain and collect their final counts), then receivers; merged results."""
        self._stop_side("send", timeout)
        self._stop_side("recv", timeout)
        results = self.results()
        try:
            os.unlink(self.manifest_path)
        except OSError:
            pass
        return results

    def _read(self, ep):
        try:
            with open(self._base(ep) + ".json") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def results(self):
        """{flow name: merged result}, live while the flows run."""
        merged = {}
        flows = {}
        for ep in self.endpoints:
            flows.setdefault(ep["flow"], {"kind": ep["kind"], "family": ep["family"]})[ep["side"]] = self._read(ep)
        for name, parts in flows.items():
            merged[name] = merge(name, parts["kind"], parts["family"], parts.get("send"), parts.get("recv"))
        return merged

    @staticmethod
    def healthy(results):
        return bool(results) and all(r["ok"] for r in results.values())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if any(self._running(ep) for ep in self.endpoints):
            self.stop()
        return False


def merge(name, kind, family, send, recv):
    """One result per flow from its two sides (None for a side that wrote nothing)."""
    send = send or {}
    recv = recv or {}
    kind = MEASURED_AS.get(kind, kind)
    errors = ["send: %s" % e for e in send.get("errors", [])] + ["recv: %s" % e for e in recv.get("errors", [])]
    if kind != "ping":
        if not send:
            errors.append("send: no result")
        if not recv:
            errors.append("recv: no result")
    running = bool(send.get("running") or recv.get("running"))
    result = {"name": name, "kind": kind, "family": family, "running": running, "errors": errors}
    if kind in ("tcp", "fwd"):
        sent, received = send.get("bytes_sent", 0), recv.get("bytes_received", 0)
        result.update({"bytes_sent": sent, "bytes_received": received, "lost": max(0, sent - received),
                       "lost_unit": "bytes", "in_order": recv.get("in_order", False),
                       "max_gap_ms": recv.get("max_gap_ms", 0.0), "peers": recv.get("peers", []),
                       "local": send.get("local"), "acked": send.get("acked")})
        complete = running or (send.get("acked") == sent and recv.get("completed", False))
        ok = result["in_order"] and complete and (running or result["lost"] == 0)
    elif kind == "udp":
        sent, received = send.get("sent", 0), recv.get("received", 0)
        result.update({"bytes_sent": send.get("bytes_sent", 0), "bytes_received": recv.get("bytes_received", 0),
                       "packets_sent": sent, "packets_received": received, "lost": max(0, sent - received),
                       "lost_unit": "packets", "echo_lost": max(0, sent - send.get("echoed", 0)),
                       "reordered": recv.get("reordered", 0), "duplicates": recv.get("duplicates", 0),
                       "max_gap_ms": recv.get("max_gap_ms", 0.0), "peers": recv.get("peers", []),
                       "local": send.get("local")})
        ok = running or (result["lost"] == 0 and result["echo_lost"] == 0)
        ok = ok and result["reordered"] == 0 and result["duplicates"] == 0
    elif kind == "udpo":
        sent, received = send.get("sent", 0), recv.get("received", 0)
        result.update({"bytes_sent": send.get("bytes_sent", 0), "bytes_received": recv.get("bytes_received", 0),
                       "packets_sent": sent, "packets_received": received, "lost": max(0, sent - received),
                       "lost_unit": "packets", "reordered": recv.get("reordered", 0),
                       "duplicates": recv.get("duplicates", 0), "max_gap_ms": recv.get("max_gap_ms", 0.0),
                       "peers": recv.get("peers", []), "local": send.get("local")})
        ok = (running or result["lost"] == 0) and result["reordered"] == 0 and result["duplicates"] == 0
    else:
        sent, received = send.get("sent", 0), send.get("received", 0)
        result.update({"bytes_sent": sent * (PING_SIZE + 8), "bytes_received": received * (PING_SIZE + 8),
                       "packets_sent": sent, "packets_received": received, "lost": max(0, sent - received),
                       "lost_unit": "packets", "max_gap_ms": send.get("max_gap_ms", 0.0),
                       "peers": send.get("peers", [])})
        ok = running or result["lost"] == 0
    if running:
        result["lost"] = None  # bytes in flight are not lost: counted once the flow has stopped
    result["ok"] = bool(ok and not errors and len(result["peers"]) == 1)
    return result


def format_results(results):
    """A table a person reads at a glance."""
    lines = ["%-6s %-4s %12s %12s %8s %9s  %s" % ("flow", "ok", "sent", "received", "lost", "gap ms", "peers")]
    for name in sorted(results):
        r = results[name]
        lines.append("%-6s %-4s %12d %12d %8s %9.1f  %s%s" % (
            name, "yes" if r["ok"] else "NO", r["bytes_sent"], r["bytes_received"],
            "-" if r["lost"] is None else "%d%s" % (r["lost"], "B" if r["lost_unit"] == "bytes" else "p"),
            r["max_gap_ms"],
            ", ".join(r["peers"]) or "-", ("  " + "; ".join(r["errors"])) if r["errors"] else ""))
    return "\n".join(lines)


def start_flows(lab, **kwargs):
    """Start a FlowSet (see its arguments) and return it once every flow carries traffic."""
    return FlowSet(lab, **kwargs).start()


def new_connection_ok(lab, timeout=2.0, family=4):
    """Does a brand-new TCP connection from the client to the server get through the NAT now?"""
    script = os.path.abspath(__file__)
    address = lab.addresses["server"][family]
    listener = lab.popen("server", [sys.executable, "-S", script, "_listen-once", address, str(PORTS["probe"]),
                                    str(timeout + 1)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not select.select([listener.stdout], [], [], 5)[0] or listener.stdout.readline().strip() != "ready":
            raise FlowError("probe listener did not start in the server namespace")
        probe = lab.run("client", [sys.executable, "-S", script, "_connect-once", address, str(PORTS["probe"]),
                                   str(timeout)], check=False, timeout=timeout + 10)
        return probe.returncode == 0
    finally:
        if listener.poll() is None:
            listener.terminate()
        listener.communicate()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Live flows through an nfstate lab.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start flows in a lab (in the background)")
    start.add_argument("name")
    start.add_argument("--kinds", default=",".join(KINDS))
    start.add_argument("--families", default="4,6")
    start.add_argument("--duration", type=float, default=300.0)
    start.add_argument("--rate", type=int, default=128 * 1024, help="TCP bytes per second")
    for command in ("status", "stop"):
        cmd = sub.add_parser(command, help="%s the lab's flows; JSON results" % command)
        cmd.add_argument("name")
        cmd.add_argument("--table", action="store_true", help="a table instead of JSON")
    check = sub.add_parser("check", help="exit 0 when a new TCP connection through the NAT works")
    check.add_argument("name")
    check.add_argument("--timeout", type=float, default=2.0)
    check.add_argument("--family", type=int, choices=(4, 6), default=4)
    worker = sub.add_parser("_worker")
    worker.add_argument("kind", choices=sorted(WORKERS))
    for option in ("--flow", "--dir", "--addr"):
        worker.add_argument(option, required=True)
    worker.add_argument("--port", type=int, default=0)
    worker.add_argument("--duration", type=float, default=60.0)
    worker.add_argument("--rate", type=int, default=128 * 1024)
    worker.add_argument("--interval", type=float, default=0.01)
    for command in ("_listen-once", "_connect-once"):
        once = sub.add_parser(command)
        once.add_argument("addr")
        once.add_argument("port", type=int)
        once.add_argument("timeout", type=float)
    args = parser.parse_args(argv)

    if args.command == "_worker":
        return WORKERS[args.kind](args).main()
    if args.command == "_listen-once":
        return listen_once(args.addr, args.port, args.timeout)
    if args.command == "_connect-once":
        return connect_once(args.addr, args.port, args.timeout)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nfstate_lab import Lab  # pylint: disable=import-outside-toplevel
    lab = Lab(args.name)
    try:
        if args.command == "start":
            flows = FlowSet(lab, kinds=args.kinds.split(","), families=[int(f) for f in args.families.split(",")],
                            duration=args.duration, rate=args.rate).start()
            json.dump({"flows": sorted({ep["flow"] for ep in flows.endpoints}), "pids": flows.pids,
                       "duration": flows.duration}, sys.stdout)
            sys.stdout.write("\n")
            return 0
        if args.command == "check":
            ok = new_connection_ok(lab, args.timeout, args.family)
            sys.stdout.write("new connection: %s\n" % ("ok" if ok else "FAILED"))
            return 0 if ok else 1
        flows = FlowSet.attach(lab)
        results = flows.stop() if args.command == "stop" else flows.results()
    except FlowError as err:
        sys.stderr.write("flows: %s\n" % err)
        return 2
    if args.table:
        sys.stdout.write(format_results(results) + "\n")
    else:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0 if FlowSet.healthy(results) else 1


if __name__ == "__main__":
    sys.exit(main())
