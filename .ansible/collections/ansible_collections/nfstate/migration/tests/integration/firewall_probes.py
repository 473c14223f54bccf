# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firewall tests' listeners and probes, run inside a lab namespace with the host's Python.

    python3 firewall_probes.py serve ADDR:PORT...        TCP listeners that accept and close
    python3 firewall_probes.py probe STEPS_JSON          a list of steps, each a list of probes run
                                                         at the same time; prints their answers
A probe is [kind, src, dst, port]: tcp (connected?), ping (answered?), udp (`port` datagrams of
1000 bytes to dst:53, or to the port a fifth member gives).
"""
import json
import socket
import subprocess
import sys
import threading


def serve(specs):
    def loop(listener):
        while True:
            conn, dummy = listener.accept()
            conn.close()
    for spec in specs:
        addr, port = spec.rsplit(":", 1)
        listener = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, int(port)))
        listener.listen(64)
        threading.Thread(target=loop, args=(listener,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def connect(src, dst, port, timeout):
    sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.bind((src, 0))
        sock.connect((dst, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def probe(item):
    kind, src, dst, port = item[:4]
    if kind == "tcp":
        return connect(src, dst, port, 1.5)
    if kind == "knock":            # one SYN that the firewall drops (and learns from)
        connect(src, dst, port, 0.3)
        return None
    if kind == "ping":
        return subprocess.run(["ping", "-c1", "-W1", "-I", src, dst], capture_output=True, check=False).returncode == 0
    if kind == "udp":              # `port` datagrams of 1000 bytes to dst:53, or to dst:item[4]
        sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((src, 0))
        for dummy in range(port):
            sock.sendto(b"x" * 1000, (dst, item[4] if len(item) > 4 else 53))
        sock.close()
        return None
    raise ValueError("unknown probe %r" % (kind,))


def run_steps(steps):
    """Each step's probes at the same time, the steps one after another; their answers."""
    results = []
    for step in steps:
        out = [None] * len(step)

        def run(i, item):
            out[i] = probe(item)
        threads = [threading.Thread(target=run, args=(i, item)) for i, item in enumerate(step)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.append(out)
    return results


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        print(json.dumps(run_steps(json.loads(sys.argv[2]))))
