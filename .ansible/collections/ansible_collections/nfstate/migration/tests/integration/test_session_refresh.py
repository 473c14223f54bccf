"""A live UDP flow outlives its pre-copied lifetime: the delta carries it refreshed, the target extends it.

The real module runs under ansible-playbook inside network namespaces made here (conftest.py's
playbook_hosts, as test_nat_sessions_faults uses them, with this file's own namespace names). The source's flow is kept alive by
real packets: a socket inside the source namespace sends them from the flow's inside address, so the
kernel refreshes the session as it does for forwarded traffic. They leave through a veth pair whose
both ends are in that namespace, on documentation addresses only.
"""

import json
import os
import shutil

import pytest

from labs import PYTHON

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "conntrack")), reason="needs ip, nft, conntrack"),
]

NAT = "203.0.113.1"       # the NAT's outside address
SERVER = "203.0.113.20"   # a server outside
OURS = {"addresses": [NAT + "/32"]}

# {identity as TABLE writes it: remaining timeout}, read with the collection's driver.
TIMEOUTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack import Conntrack
with Conntrack() as table:
    entries = table.dump(translated_only=True)
print(json.dumps(dict((json.dumps([list(e.orig), e.zone]), e.timeout) for e in entries)))
"""

# One datagram of the flow, as its inside host sends it: the kernel refreshes the session.
SEND = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.sendto(b"still here", (sys.argv[3], int(sys.argv[4])))
"""

# The source NAT's own rule. Empty NAT chains are not enough here: until a rule needs connection
# tracking (a nat or ct expression), the kernel does not track the namespace's packets at all, and
# the flow's datagrams would not refresh its session.
SOURCE_RULE = """
table ip nat {
    chain post { oifname "out0" ip saddr 192.0.2.0/24 snat to %s; }
}
""" % NAT

FLOW = ("192.0.2.20", 5353, SERVER, 53, 20020)   # live: its packets keep coming
IDLE = ("192.0.2.21", 5354, SERVER, 53, 20021)   # no packet since the pre-copy
TCP = ("192.0.2.22", 40022, SERVER, 5001, 20022)  # an established connection, idle too


def identity(src, sport, dst, dport, proto):
    return json.dumps([[2, proto, src, dst, sport, dport, None, None], 0])


def timeouts(host):
    return json.loads(host.run(PYTHON, "-c", TIMEOUTS, host.root).stdout)


def insert(host, proto, session, timeout, *extra):
    src, sport, dst, dport, nat_port = session
    host.run("conntrack", "-I", "-p", proto, "-s", src, "-d", dst, "--sport", str(sport), "--dport", str(dport),
             "--src-nat", "%s:%d" % (NAT, nat_port), "-t", str(timeout), "-u", "SEEN_REPLY,ASSURED", *extra)


def test_a_refreshed_udp_flow_is_carried_by_the_delta_and_extended_on_the_target(playbook_hosts):
    source, target = playbook_hosts("source"), playbook_hosts("target")
    source.run("nft", "-f", "-", input=SOURCE_RULE)
    # The flow's inside address, on one end of a veth pair that stays inside the namespace.
    source.run("ip", "link", "add", "in0", "type", "veth", "peer", "name", "in1")
    source.run("ip", "addr", "add", FLOW[0] + "/24", "dev", "in0")
    for dev in ("in0", "in1"):
        source.run("ip", "link", "set", dev, "up")
    source.run("ip", "route", "add", SERVER + "/32", "dev", "in0")
    source.run("ip", "neigh", "add", SERVER, "lladdr", "02:00:00:00:00:01", "dev", "in0")

    insert(source, "udp", FLOW, 45)  # about to run out, as a quiet UDP flow is at pre-copy time
    insert(source, "udp", IDLE, 100)
    insert(source, "tcp", TCP, 600, "--state", "ESTABLISHED")
    full = os.path.join(source.workdir, "full.json.gz")
    delta = os.path.join(source.workdir, "delta.json.gz")
    flow, idle, tcp = identity(*FLOW[:4], proto=17), identity(*IDLE[:4], proto=17), identity(*TCP[:4], proto=6)

    [gathered_full] = source.play(("sessions", {"state": "gathered", "dest": full, "selectors": OURS}))
    [precopy] = target.play(("sessions", {"state": "merged", "src": [full]}))
    precopied = timeouts(target)
    precopied_table = target.table()

    # The flow goes on: the source's kernel refreshes its session with every datagram.
    source.run(PYTHON, "-c", SEND, FLOW[0], str(FLOW[1]), FLOW[2], str(FLOW[3]))
    on_source = timeouts(source)
    [gathered_delta] = source.play(
        ("sessions", {"state": "gathered", "dest": delta, "since": full, "selectors": OURS}))
    merged, merged_again, delta_alone, check, after_table = target.play(
        ("sessions", {"state": "merged", "src": [full, delta]}),
        ("sessions", {"state": "merged", "src": [full, delta]}),
        ("sessions", {"state": "merged", "src": [delta]}),
        ("sessions", {"state": "merged", "src": [full, delta]}, {"check_mode": True}),
        ("table",))
    after = timeouts(target)

    assert gathered_full["sessions"] == 3 and precopy["created"] == 3
    assert precopied[flow] <= 45
    assert on_source[flow] > 100  # the datagram refreshed it (UDP stream timeout, 120 s)
    # only the refreshed flow travels: the idle ones counted down as their copies did
    assert gathered_delta["failed"] is False
    assert (gathered_delta["delta_added"], gathered_delta["delta_removed"], gathered_delta["delta_refreshed"]) == (0, 0, 1)

    assert merged["failed"] is False and merged["changed"] is True
    assert (merged["refreshed"], merged["created"], merged["deleted"], merged["unchanged"]) == (1, 0, 0, 3)
    [command] = merged["commands"]
    assert command.startswith("conntrack -U -f ipv4 -p 17 -s 192.0.2.20 -d 203.0.113.20 --sport 5353 --dport 53 -t ")
    # the target's copy now lives as long as the source's, with the same binding
    assert after[flow] >= on_source[flow] - 15
    assert after_table[flow] == precopied_table[flow]
    assert after_table == precopied_table
    assert after[idle] <= precopied[idle] and after[tcp] <= precopied[tcp]

    assert merged_again["changed"] is False and merged_again["refreshed"] == 0
    assert delta_alone["changed"] is False and delta_alone["unchanged"] == 1
    assert check["changed"] is False and check["commands"] == []
