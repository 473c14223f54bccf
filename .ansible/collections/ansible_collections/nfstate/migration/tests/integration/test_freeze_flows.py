"""The freeze alone (the nat role's freeze entry point on the lab's source, over SSH) against the
traffic it must not stop: a one-way UDP stream, whose conntrack entry stays NEW for ever because it
never sees a reply, loses no datagram; a TCP connection still in SYN_SENT when the freeze starts
(its entry exists, its SYN-ACK has not come yet) is held, not broken, and completes; a brand-new
connection is what waits."""

import os
import subprocess
import sys
import time

import pytest

from ansible_collections.nfstate.migration.lab.flows import FlowSet, format_results, new_connection_ok
from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
SYN_PORT = 5010
DEADLINE = 6

# Connect once (one SYN, then the kernel's retransmissions), echo a line; exit 0 when it came back.
CONNECT = r'''
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
sock.sendall(b"held\n")
sys.exit(0 if sock.recv(16) == b"held\n" else 1)
'''
SERVE = r'''
import socket, sys
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((sys.argv[1], int(sys.argv[2])))
listener.listen(4)
print("ready", flush=True)
conn, peer = listener.accept()
conn.sendall(conn.recv(16))
print(peer[0], flush=True)
'''


def nat_step(lab, step, *extra):
    argv = [ANSIBLE, "nat-a", "-m", "ansible.builtin.include_role",
            "-a", "name=nfstate.migration.nat tasks_from=%s" % step] + list(extra)
    run = subprocess.run(argv, env=lab.env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def conntrack(lab, *args):
    return lab.run("nat-a", ["conntrack", "-L", "-n"] + list(args), check=False).stdout


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(params=["iptables-legacy", "nftables"])
def lab(request):
    with Lab("cfz", source_impl=request.param) as built:
        yield built


def test_freeze_holds_only_the_creation_of_entries(lab):
    server = lab.addresses["server"][4]
    with FlowSet(lab, kinds=("udpo",), duration=60) as flows:
        # Both one-way entries exist and have never seen a reply: conntrack calls their packets NEW.
        listing = conntrack(lab, "-p", "udp", "--dport", "5004")
        assert listing.count("[UNREPLIED]") == 2, listing

        # A connection in SYN_SENT: its SYN crossed the NAT (the entry exists), the server's input
        # drops it for now, so no SYN-ACK comes until the kernel retransmits.
        lab.run("server", ["nft", "add table ip cfzhold; add chain ip cfzhold in { type filter hook input priority 0 ; };"
                                  " add rule ip cfzhold in tcp dport %d tcp flags syn drop" % SYN_PORT])
        listener = lab.popen("server", [sys.executable, "-c", SERVE, server, str(SYN_PORT)],
                             stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "ready"
        client = lab.popen("client", [sys.executable, "-c", CONNECT, server, str(SYN_PORT), "30"],
                           stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: "SYN_SENT" in conntrack(lab, "-p", "tcp", "--dport", str(SYN_PORT)), 5,
                     "the client's SYN never reached the NAT")
            nat_step(lab, "freeze", "-e", "nfstate_freeze_deadline=%d" % DEADLINE)
            frozen_at = time.monotonic()
            lab.run("server", ["nft", "delete table ip cfzhold"])
            # The freeze is in force: a brand-new connection waits...
            assert not new_connection_ok(lab, timeout=1.0), "the source was not frozen"
            # ...while the connection in SYN_SENT completes (its retransmitted SYN belongs to an entry).
            assert client.wait(timeout=DEADLINE + 20) == 0, client.stderr.read()
            completed_at = time.monotonic()
            seen_as = listener.communicate(timeout=5)[0].strip()
            time.sleep(0.5)
            during = flows.results()["udpo4"], flows.results()["udpo6"]
            nat_step(lab, "unfreeze")
            results = flows.stop()
        finally:
            for proc in (client, listener):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    assert seen_as == lab.addresses["external"][4], seen_as   # translated, as every session of the NAT
    for result in during:
        assert result["packets_received"] > 0 and not result["errors"], result
    assert FlowSet.healthy(results), format_results(results)
    for name in ("udpo4", "udpo6"):
        assert results[name]["lost"] == 0 and results[name]["packets_sent"] > 100, format_results(results)
    print("SYN_SENT connection completed %.2f s after the freeze" % (completed_at - frozen_at))
    assert new_connection_ok(lab)
