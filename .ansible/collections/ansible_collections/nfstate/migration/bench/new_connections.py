# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How long new connections wait during a migration, seen from the client.

A prober in the client's namespace opens a brand-new TCP connection to a listener in the server's
namespace every --interval seconds (20 ms), each with a short deadline (--timeout, 0.5 s: shorter
than the kernel's first SYN retransmission at 1 s, so an attempt tells about its own moment only).
A connection counts when its handshake completes; it is then reset at once (SO_LINGER 0), so that
the NAT's entry for it ends after 10 s (CLOSE) rather than lingering in TIME_WAIT. Every attempt is
kept as [start, connected or null] on the wall clock, the one the playbook's task times use.

    python3 bench/new_connections.py serve ADDR PORT STOPFILE
    python3 bench/new_connections.py probe ADDR PORT STOPFILE OUT [--interval 0.02] [--timeout 0.5]

The freeze window is the longest stretch between the starts of two consecutive connections that got
through: from the last one before the freeze to the first one the target served (freeze_window()).
"""

import argparse
import errno
import json
import os
import selectors
import signal
import socket
import struct
import time


def _family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _stopper(stopfile):
    state = {"stop": False, "next_check": 0.0}

    def on_signal(_signum, _frame):
        state["stop"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def should_stop():
        now = time.monotonic()
        if now >= state["next_check"]:
            state["next_check"] = now + 0.05
            state["stop"] = state["stop"] or os.path.exists(stopfile)
        return state["stop"]
    return should_stop


def serve(addr, port, stopfile):
    """Accept and close, until told to stop."""
    should_stop = _stopper(stopfile)
    listener = socket.socket(_family(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(1024)
    listener.settimeout(0.05)
    print("ready", flush=True)
    while not should_stop():
        try:
            conn, _peer = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            continue
        conn.close()
    listener.close()


def probe(addr, port, stopfile, out, interval, timeout):
    should_stop = _stopper(stopfile)
    family = _family(addr)
    sel = selectors.DefaultSelector()
    pending = {}
    attempts = []
    linger = struct.pack("ii", 1, 0)
    next_at = time.time()
    print("ready", flush=True)
    while not should_stop():
        now = time.time()
        if now >= next_at:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            code = sock.connect_ex((addr, port))
            if code in (0, errno.EINPROGRESS):
                pending[sock] = now
                sel.register(sock, selectors.EVENT_WRITE)
            else:
                attempts.append([now, None])
                sock.close()
            next_at += interval
            if next_at < now:  # never a burst to catch up after a stall: one attempt per moment
                next_at = now + interval
        for key, _mask in sel.select(max(0.0, min(next_at - time.time(), interval))):
            sock = key.fileobj
            done = time.time()
            ok = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            attempts.append([pending.pop(sock), done if ok else None])
            sel.unregister(sock)
            sock.close()
        now = time.time()
        for sock, started in list(pending.items()):
            if now - started > timeout:
                attempts.append([started, None])
                del pending[sock]
                sel.unregister(sock)
                sock.close()
    for sock, started in pending.items():
        attempts.append([started, None])
        sock.close()
    attempts.sort()
    tmp = out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump({"addr": addr, "port": port, "interval": interval, "timeout": timeout, "attempts": attempts}, handle)
    os.replace(tmp, out)


def freeze_window(attempts, after=None):
    """The longest stretch without a new connection: {seconds, from, to, attempts_failed}.

    from/to are the starts of the connections on either side of it; after (a wall-clock moment)
    ignores what came before, e.g. the prober's first moments."""
    ok = [start for start, connected in attempts if connected is not None and (after is None or start >= after)]
    best = {"seconds": 0.0, "from": None, "to": None, "attempts_failed": 0}
    for before, later in zip(ok, ok[1:]):
        if later - before > best["seconds"]:
            best = {"seconds": later - before, "from": before, "to": later}
    if best["from"] is not None:
        best["attempts_failed"] = sum(1 for start, connected in attempts
                                      if connected is None and best["from"] < start < best["to"])
    best["seconds"] = round(best["seconds"], 3)
    best["attempts"] = len(attempts)
    best["connected"] = len(ok)
    return best


def longest_wait(attempts, after=None):
    """The longest handshake among the connections that got through: {seconds, start, failed}.
    With a timeout longer than the SYN's first retransmission (1 s), a SYN dropped in a freeze
    window shows here as the window's rest plus that retransmission."""
    waits = [(connected - start, start) for start, connected in attempts
             if connected is not None and (after is None or start >= after)]
    seconds, start = max(waits) if waits else (0.0, None)
    failed = sum(1 for start_, connected in attempts if connected is None and (after is None or start_ >= after))
    return {"seconds": round(seconds, 3), "start": start, "failed": failed}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve")
    prb = sub.add_parser("probe")
    for each in (srv, prb):
        each.add_argument("addr")
        each.add_argument("port", type=int)
        each.add_argument("stopfile")
    prb.add_argument("out")
    prb.add_argument("--interval", type=float, default=0.02)
    prb.add_argument("--timeout", type=float, default=0.5)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.addr, args.port, args.stopfile)
    else:
        probe(args.addr, args.port, args.stopfile, args.out, args.interval, args.timeout)


if __name__ == "__main__":
    main()
