"""ALG state moves between NAT implementations: FTP sessions keep working after the move.

A lab of our own: a client (192.0.2.2), two NAT namespaces on two bridges, one iptables-legacy and
one nftables, and an FTP server (pyftpdlib, 198.51.100.9). Each NAT has an SNAT rule, the FTP helper
assigned by our rendered ALG rules, and a forward chain with policy drop that lets through only
established/related packets and new control connections. The client logs in through the source
NAT and pauses mid-way; the source's master session (with helper and sequence adjustment) and its
expectations are dumped, mapped through the model, re-created on the target with the functions
under test, the NAT's addresses move, and the client carries on. A control run moves the session
alone, as the model without ALG state would, and fails as issue 9 measured.

Kernel calls run in a thread that entered the namespace (setns), so nothing touches the root
namespace's tables.
"""

import errno
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from ansible_collections.nfstate.migration.plugins.module_utils import alg_model
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_entry import FlowTuple, inverse
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import (
    Expectation,
    ExpectTable,
    exact_mask,
    pack_tuple,
    parse_tuple,
)
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_helper import (
    IPS_EXPECTED,
    IPS_HELPER,
    IPS_SEQ_ADJUST,
    HelperState,
    SeqAdjust,
    pack_helper_attrs,
    parse_helper_attrs,
)
from ansible_collections.nfstate.migration.plugins.module_utils.netlink import (
    NFGENMSG,
    NFNL_HDRLEN,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSGHDR,
    NETLINK_NETFILTER,
    NetlinkSocket,
    iter_attrs,
    iter_messages,
    nfnl_msg_type,
    pack_message,
    pack_nested,
    pack_nla,
)
from ansible_collections.nfstate.migration.plugins.module_utils.templates import alg_iptables, alg_nftables
from alg_peers import UDP_PEER_CODE, Peer, read_line
from ftp_client import CLIENT_CODE
from netns_call import in_netns

SYSTEM_PYTHON = "/usr/bin/python3"


def _have_pyftpdlib():
    return os.path.exists(SYSTEM_PYTHON) and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import pyftpdlib"], capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "nft", "iptables-legacy-restore")),
                       reason="needs ip, nft, iptables-legacy"),
    pytest.mark.skipif(not _have_pyftpdlib(), reason="needs python3-pyftpdlib"),
]

CLIENT, SERVER, GATEWAY, NAT_ADDR = "192.0.2.2", "198.51.100.9", "192.0.2.1", "198.51.100.1"
TIMEOUT = 8  # seconds a client operation may take before it counts as failed
PAYLOAD_SIZE = 200000

# --- a minimal conntrack create and dump (conntrack.py's own driver is not under test here) ------

CT_NEW = nfnl_msg_type(1, 0)
CT_GET = nfnl_msg_type(1, 1)
CT_DELETE = nfnl_msg_type(1, 2)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_NAT_SRC, CTA_TIMEOUT = 1, 2, 3, 4, 6, 7
CTA_PROTOINFO_TCP, CTA_TCP_STATE, CTA_TCP_FLAGS_ORIG, CTA_TCP_FLAGS_REPLY = 1, 1, 4, 5
CTA_NAT_V4_MINIP, CTA_NAT_PROTO, CTA_PROTONAT_PORT_MIN = 1, 3, 1
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED, IPS_SRC_NAT = 2, 4, 8, 16
TCP_ESTABLISHED, LIBERAL = 3, 0x08
BE32 = struct.Struct(">I")


def ct_dump():
    """[(orig, reply, status, timeout, tcp_state, HelperState)] of the namespace's IPv4 entries."""
    entries = []
    with NetlinkSocket(NETLINK_NETFILTER, buffer_size=1 << 20) as nl:
        for buf, start, end in nl.dump(pack_message(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, b"", family=socket.AF_INET)):
            for offset, length, mtype, _f, _s in iter_messages(buf, start, end):
                if mtype != CT_NEW:
                    continue
                family = NFGENMSG.unpack_from(buf, offset + NLMSGHDR.size)[0]
                fields = {"state": None}
                for atype, off, size in iter_attrs(buf, offset + NFNL_HDRLEN, offset + length):
                    if atype in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
                        fields[atype] = parse_tuple(buf, off, size, family)
                    elif atype in (CTA_STATUS, CTA_TIMEOUT):
                        fields[atype] = BE32.unpack_from(buf, off)[0]
                    elif atype == CTA_PROTOINFO:
                        for _t, t_off, t_size in iter_attrs(buf, off, off + size):
                            for s_type, s_off, _size in iter_attrs(buf, t_off, t_off + t_size):
                                if s_type == CTA_TCP_STATE:
                                    fields["state"] = buf[s_off]
                entries.append((fields[CTA_TUPLE_ORIG], fields[CTA_TUPLE_REPLY], fields[CTA_STATUS],
                                fields[CTA_TIMEOUT], fields["state"], parse_helper_attrs(buf, offset, length)))
    return entries


def ct_create(entries):
    """Re-create (orig, reply, status, timeout, state, HelperState) entries; returns [(index, errno)].

    As docs/model.md says: the plain inverse as reply tuple, the binding as CTA_NAT_SRC, the
    helper state (when given) beside it, TCP tracking liberal.
    """
    messages = []
    for orig, reply, status, timeout, state, helper in entries:
        attrs = [pack_tuple(CTA_TUPLE_ORIG, orig), pack_tuple(CTA_TUPLE_REPLY, inverse(orig)),
                 pack_nla(CTA_STATUS, BE32.pack(IPS_CONFIRMED | (status & (IPS_SEEN_REPLY | IPS_ASSURED)))),
                 pack_nla(CTA_TIMEOUT, BE32.pack(timeout))]
        if orig.proto == 6:
            attrs.append(pack_nested(CTA_PROTOINFO, pack_nested(
                CTA_PROTOINFO_TCP, pack_nla(CTA_TCP_STATE, bytes([state])),
                pack_nla(CTA_TCP_FLAGS_ORIG, bytes([LIBERAL, LIBERAL])),
                pack_nla(CTA_TCP_FLAGS_REPLY, bytes([LIBERAL, LIBERAL])))))
        if (reply.dst, reply.dport) != (orig.src, orig.sport):
            attrs.append(pack_nested(CTA_NAT_SRC, pack_nla(CTA_NAT_V4_MINIP, socket.inet_aton(reply.dst)),
                                     pack_nested(CTA_NAT_PROTO, pack_nla(CTA_PROTONAT_PORT_MIN, struct.pack(">H", reply.dport)))))
        if helper is not None:
            attrs.append(pack_helper_attrs(helper))
        messages.append(pack_message(CT_NEW, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, b"".join(attrs), family=orig.family))
    with NetlinkSocket(NETLINK_NETFILTER, buffer_size=1 << 20) as nl:
        return nl.transact(messages, ack_each=True)


def ct_delete(tuples):
    """Delete entries by original tuple; returns [(index, errno)]."""
    messages = [pack_message(CT_DELETE, NLM_F_REQUEST, pack_tuple(CTA_TUPLE_ORIG, orig), family=orig.family) for orig in tuples]
    with NetlinkSocket(NETLINK_NETFILTER, buffer_size=1 << 20) as nl:
        return nl.transact(messages, ack_each=True)


def exp_delete(expectations):
    with ExpectTable() as table:
        return table.delete(expectations)


def exp_dump():
    with ExpectTable() as table:
        return table.dump()


def exp_create(expectations):
    with ExpectTable() as table:
        return table.create(expectations)


# --- running in a namespace ---------------------------------------------------------------------

def sh(*argv, **kwargs):
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30, **kwargs)
    assert proc.returncode == 0, "%s: %s" % (" ".join(argv), proc.stderr)
    return proc


# --- the FTP server and a client that pauses between steps ---------------------------------------

SERVER_CODE = r"""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

class Handler(FTPHandler):
    def pre_process_command(self, line, cmd, arg):
        print("RECV " + line, flush=True)  # what reached the server, for the control runs
        return FTPHandler.pre_process_command(self, line, cmd, arg)

authorizer = DummyAuthorizer()
authorizer.add_user("user", "secret", sys.argv[2], perm="elr")
Handler.authorizer = authorizer
server = FTPServer((sys.argv[1], 21), Handler)
print("READY", flush=True)
server.serve_forever()
"""

# --- the lab --------------------------------------------------------------------------------------

NAT_RULES = {
    "legacy": ("*nat\n-A POSTROUTING -o out0 -j SNAT --to-source %s\nCOMMIT\n"
               "*filter\n:FORWARD DROP [0:0]\n"
               "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
               "-A FORWARD -i in0 -o out0 -p tcp -m tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT\n"
               "-A FORWARD -i in0 -o out0 -p udp -m multiport --dports 69,5060 -m conntrack --ctstate NEW -j ACCEPT\n"
               "COMMIT\n") % NAT_ADDR,
    "nft": ("table ip a_nat {\n  chain post {\n    type nat hook postrouting priority 100;\n"
            "    oifname \"out0\" snat to %s\n  }\n}\n"
            "table inet a_filter {\n  chain forward {\n    type filter hook forward priority 0; policy drop;\n"
            "    ct state established,related accept\n"
            "    iifname \"in0\" oifname \"out0\" tcp dport 21 ct state new accept\n"
            "    iifname \"in0\" oifname \"out0\" udp dport { 69, 5060 } ct state new accept\n  }\n}\n") % NAT_ADDR,
}
ALGS = [{"name": "ftp", "transport-protocol": 6, "dst-transport-port": {"start-port-number": 21}, "status": True},
        {"name": "tftp", "status": True}, {"name": "sip", "transport-protocol": 17}]


class Lab(object):
    """cli -- [brin] -- nat1/nat2 -- [brout] -- srv; the bridges live in a namespace of their own."""

    def __init__(self, prefix, source, target):
        self.prefix = prefix
        self.names = []
        self.procs = []
        self.kinds = {"nat1": source, "nat2": target}
        self.tmp = tempfile.mkdtemp(prefix="nfstate-alg-")
        self.payload = os.urandom(PAYLOAD_SIZE)

    def ns(self, short):
        return self.prefix + short

    def build(self):
        for short in ("sw", "cli", "nat1", "nat2", "srv"):
            name = self.ns(short)
            sh("ip", "netns", "add", name)
            self.names.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sw = self.ns("sw")
        for bridge in ("brin", "brout"):
            sh("ip", "-n", sw, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", sw, "link", "set", bridge, "up")
        for short, dev, bridge, port in (("cli", "eth0", "brin", "c0"), ("nat1", "in0", "brin", "n1i"),
                                         ("nat1", "out0", "brout", "n1o"), ("nat2", "in0", "brin", "n2i"),
                                         ("nat2", "out0", "brout", "n2o"), ("srv", "eth0", "brout", "s0")):
            sh("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", self.ns(short))
            sh("ip", "-n", sw, "link", "set", port, "master", bridge, "up")
            sh("ip", "-n", self.ns(short), "link", "set", dev, "up")
        sh("ip", "-n", self.ns("cli"), "addr", "add", CLIENT + "/24", "dev", "eth0")
        sh("ip", "-n", self.ns("cli"), "route", "add", "default", "via", GATEWAY)
        sh("ip", "-n", self.ns("srv"), "addr", "add", SERVER + "/24", "dev", "eth0")
        for short in ("nat1", "nat2"):
            sh("ip", "netns", "exec", self.ns(short), "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.load_rules(short)
        self.claim("nat1")
        with open(os.path.join(self.tmp, "data.bin"), "wb") as handle:
            handle.write(self.payload)
        self.server = self.spawn("srv", SERVER_CODE, SERVER, self.tmp)
        assert read_line(self.server, 10).strip() == "READY"
        self.received = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()
        self.client = self.peer("cli", CLIENT_CODE, SERVER, str(TIMEOUT))
        self.udp_client = self.peer("cli", UDP_PEER_CODE, "client", CLIENT, str(TIMEOUT))
        self.udp_server = self.peer("srv", UDP_PEER_CODE, "server", SERVER, str(TIMEOUT))
        for peer in (self.udp_client, self.udp_server):
            assert "ready" in peer.answer()

    def load_rules(self, short):
        """NAT, forward filter and our rendered ALG rules, in the NAT's implementation."""
        ns = self.ns(short)
        rules, refused = alg_model.algs_to_rules(ALGS)
        assert refused == [] and rules
        if self.kinds[short] == "legacy":
            sh("ip", "netns", "exec", ns, "iptables-legacy-restore", input=NAT_RULES["legacy"])
            sh("ip", "netns", "exec", ns, "iptables-legacy-restore", "--noflush", input=alg_iptables.restore_payload(rules))
        else:
            sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=NAT_RULES["nft"])
            sh("ip", "netns", "exec", ns, "nft", "-j", "-f", "-", input=json.dumps(alg_nftables.render_commands(rules)))

    def alg_rules(self, short):
        """The ALG rules the NAT holds, parsed back by the template of its implementation."""
        ns = self.ns(short)
        if self.kinds[short] == "legacy":
            return alg_iptables.parse_save(sh("ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "raw").stdout).rules
        listing = json.loads(sh("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", alg_nftables.TABLE_NAME).stdout)
        return alg_nftables.parse_ruleset(listing).rules

    def claim(self, short):
        ns = self.ns(short)
        sh("ip", "-n", ns, "addr", "add", GATEWAY + "/24", "dev", "in0")
        sh("ip", "-n", ns, "addr", "add", NAT_ADDR + "/24", "dev", "out0")

    def move(self, source, target):
        """The target takes the NAT's addresses; the source's links go down, neighbours relearn."""
        for dev in ("in0", "out0"):
            sh("ip", "-n", self.ns(source), "link", "set", dev, "down")
        self.claim(target)
        for short in ("cli", "srv"):
            sh("ip", "-n", self.ns(short), "neigh", "flush", "dev", "eth0")

    def spawn(self, short, code, *args):
        # stderr goes to a file: a pipe nobody reads could fill and stall the peer.
        with open(os.path.join(self.tmp, "%s-%d.log" % (short, len(self.procs))), "w") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(short), SYSTEM_PYTHON, "-c", code] + list(args),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        proc.log = log.name
        self.procs.append(proc)
        return proc

    def peer(self, short, code, *args):
        proc = self.spawn(short, code, *args)
        # The peers' own socket timeouts end a failing step; this one only guards against a hang.
        return Peer(proc, 4 * TIMEOUT + 10, proc.log)

    def _collect(self):
        for line in self.server.stdout:
            if line.startswith("RECV "):
                with self.lock:
                    self.received.append(line[5:].rstrip("\n"))

    def server_received(self):
        """The command lines the server received since the last call."""
        # The server logs a command before it answers it: what the client saw answered is in the
        # pipe; the reader thread needs a moment to take it.
        time.sleep(0.3)
        with self.lock:
            lines, self.received = self.received, []
        return lines

    def cleanup(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # by PID: ip netns exec execs the interpreter itself
            proc.wait(timeout=10)
        if getattr(self, "reader", None) is not None:
            self.reader.join(timeout=10)  # it ends at the server's end of output
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout):
                stream.close()
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def make_lab(netns_prefix):
    labs = []

    def make(source, target):
        lab = Lab(netns_prefix, source, target)
        labs.append(lab)
        lab.build()
        return lab

    yield make
    for lab in labs:
        lab.cleanup()


# --- the migration of one NAT's FTP state ---------------------------------------------------------

def gather(lab, short, proto=6):
    """The client's sessions and the expectations, as the model carries them."""
    entries = [e for e in in_netns(lab.ns(short), ct_dump)
               if e[0].proto == proto and e[0].src == CLIENT and (proto != 6 or e[4] == TCP_ESTABLISHED)]
    expectations = in_netns(lab.ns(short), exp_dump)
    pairs = [(index, entry[0]) for index, entry in enumerate(entries, 1)]
    container, refused = alg_model.expectations_container(expectations, alg_model.master_index_of(pairs))
    members = [alg_model.helper_members(entry[5]) for entry in entries]
    return entries, members, container, refused, expectations


def apply(lab, short, entries, members, container, with_alg):
    """Re-create on the target: masters (with their helper state), then expectations."""
    masters = dict((index, entry[0]) for index, entry in enumerate(entries, 1))
    todo = []
    for entry, member in zip(entries, members):
        state = alg_model.helper_state(member, masters) if with_alg else None
        todo.append(entry[:5] + (state,))
    assert in_netns(lab.ns(short), ct_create, todo) == []
    if not with_alg:
        return []
    items = container.get(alg_model.EXPECTATIONS, {}).get("expectation", [])
    expectations = [alg_model.expectation_of_item(item, masters) for item in items]
    assert in_netns(lab.ns(short), exp_create, expectations) == []
    return expectations


def migrate(lab, with_alg=True, proto=6, edit=None):
    """Source to target; edit(container) may change the model on the way (an older snapshot)."""
    entries, members, container, refused, dumped = gather(lab, "nat1", proto)
    assert len(entries) == 1, entries  # the control session
    assert refused == []
    if edit is not None:
        edit(container)
    # The source lets go first: its expectations, then its masters.
    source = lab.ns("nat1")
    assert in_netns(source, exp_delete, dumped) == []
    assert [code for _exp, code in in_netns(source, exp_delete, dumped)] == [errno.ENOENT] * len(dumped)
    assert in_netns(source, ct_delete, [entry[0] for entry in entries]) == []
    moved = set(entry[0] for entry in entries)
    assert in_netns(source, exp_dump) == [] and not [e for e in in_netns(source, ct_dump) if e[0] in moved]
    apply(lab, "nat2", entries, members, container, with_alg)
    lab.move("nat1", "nat2")
    return entries, members, container, dumped


def comparable(exp):
    return exp._replace(id=None, timeout=None)


# --- the tests ----------------------------------------------------------------------------------

DIRECTIONS = [("legacy", "nft"), ("nft", "legacy")]


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_passive_ftp_pending_data_connection_survives_the_move(make_lab, source, target):
    lab = make_lab(source, target)
    assert lab.alg_rules("nat1") == lab.alg_rules("nat2") == alg_model.algs_to_rules(ALGS)[0]
    client = lab.client
    assert "error" not in client("login")
    before = client("retr", passive=True)
    assert before.get("size") == PAYLOAD_SIZE, before
    port = client("pasv")["port"]  # pause: the server listens, the NAT expects the connection

    def older(container):  # as if the snapshot were older: the target must not restart the clock
        container[alg_model.EXPECTATIONS]["expectation"][0]["lifetime"] = 120

    entries, members, container, dumped = migrate(lab, edit=older)
    master = entries[0]
    assert master[5].helper == "ftp" and members[0][alg_model.HELPER] == "ftp"
    items = container[alg_model.EXPECTATIONS]["expectation"]
    assert len(items) == 1 and items[0]["dst-port"] == port and items[0]["master"] == 1
    assert items[0]["src-address"] == CLIENT + "/32" and items[0]["helper"] == "ftp"
    # The target holds what the source held: the expectation, tied to the re-created master, with
    # the lifetime the document gave, not the FTP helper's 300 s.
    on_target = in_netns(lab.ns("nat2"), exp_dump)
    assert [comparable(e) for e in on_target] == [comparable(e) for e in dumped]
    assert dumped[0].timeout > 250 and 100 <= on_target[0].timeout <= 120
    assert [e[5].helper for e in in_netns(lab.ns("nat2"), ct_dump)] == ["ftp"]

    data = client("fetch-pending")
    assert data == {"sha": hashlib.sha256(lab.payload).hexdigest(), "size": PAYLOAD_SIZE}
    # The helper assigned to the re-created master reads the next PASV on the target.
    again = client("retr", passive=True)
    assert again.get("size") == PAYLOAD_SIZE, again
    assert client("cmd", line="NOOP")["reply"].startswith("200")


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_active_ftp_next_command_and_data_connection_after_the_move(make_lab, source, target):
    lab = make_lab(source, target)
    client = lab.client
    assert "error" not in client("login")
    before = client("retr", passive=False)  # PORT 192,0,2,2,... becomes PORT 198,51,100,1,...
    assert before.get("size") == PAYLOAD_SIZE, before
    received = lab.server_received()
    assert any(line.startswith("PORT 198,51,100,1,") for line in received), received

    entries, members, _container, _dumped = migrate(lab)
    adjust = members[0][alg_model.SEQUENCE_ADJUSTMENT]["original"]
    assert adjust["offset-after"] == len("198,51,100,1") - len("192,0,2,2")
    on_target = [e[5] for e in in_netns(lab.ns("nat2"), ct_dump) if e[0] == entries[0][0]]
    assert on_target == [entries[0][5]._replace(master=None)]

    assert client("cmd", line="NOOP").get("reply", "").startswith("200")
    assert lab.server_received()[-1:] == ["NOOP"]
    after = client("retr", passive=False)
    assert after == {"sha": hashlib.sha256(lab.payload).hexdigest(), "size": PAYLOAD_SIZE}
    assert client("cmd", line="PWD").get("reply", "").startswith("257")


def test_control_passive_without_alg_state_loses_the_data_connection(make_lab):
    lab = make_lab("legacy", "nft")
    client = lab.client
    assert "error" not in client("login")
    client("pasv")
    entries, _members, container, _dumped = migrate(lab, with_alg=False)
    assert container[alg_model.EXPECTATIONS]["expectation"]  # it was there to move
    assert in_netns(lab.ns("nat2"), exp_dump) == []
    answer = client("fetch-pending")
    assert "timed out" in answer.get("error", ""), answer


def test_control_active_without_sequence_adjustment_garbles_the_next_command(make_lab):
    lab = make_lab("nft", "legacy")
    client = lab.client
    assert "error" not in client("login")
    assert client("retr", passive=False).get("size") == PAYLOAD_SIZE
    lab.server_received()
    _entries, members, _container, _dumped = migrate(lab, with_alg=False)
    offset = members[0][alg_model.SEQUENCE_ADJUSTMENT]["original"]["offset-after"]
    assert offset == 3  # it was there to move
    answer = client("cmd", line="NOOP")
    # The server's TCP takes the first bytes for ones it already has: it reads the rest.
    assert answer.get("error", "").startswith("error_perm: 500"), answer
    assert lab.server_received() == ["NOOP"[offset:]]


# --- TFTP and SIP: their expectations move with their NAT binding ----------------------------------

@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_tftp_transfer_answered_after_the_move(make_lab, source, target):
    lab = make_lab(source, target)
    port = lab.udp_client("tftp-rrq", server=SERVER)["port"]
    request = lab.udp_server("tftp-wait-rrq")
    assert request["request"] == "data.bin" and request["client"][0] == NAT_ADDR
    nat_port = request["client"][1]

    entries, members, container, dumped = migrate(lab, proto=17)
    assert members == [{alg_model.HELPER: "tftp"}]
    item, = container[alg_model.EXPECTATIONS]["expectation"]
    # The answer may come from any port of the server, to the translated client, and is translated back.
    assert (item["src-address"], item["dst-address"], item["dst-port"]) == (SERVER + "/32", NAT_ADDR, nat_port)
    assert "src-port" not in item and item["nat"] == {"direction": "reply", "port": port}
    assert item["expectfn"] == "nat-follow-master"
    assert [comparable(e) for e in in_netns(lab.ns("nat2"), exp_dump)] == [comparable(e) for e in dumped]

    lab.udp_client.send("tftp-receive")
    assert "error" not in lab.udp_server("tftp-send", file=os.path.join(lab.tmp, "data.bin"))
    received = lab.udp_client.answer()
    assert received["sha"] == hashlib.sha256(lab.payload).hexdigest(), received
    assert received["from"][0] == SERVER


def test_control_tftp_without_its_expectation_gets_no_answer(make_lab):
    lab = make_lab("legacy", "nft")
    lab.udp_client("tftp-rrq", server=SERVER)
    lab.udp_server("tftp-wait-rrq")
    migrate(lab, with_alg=False, proto=17)
    lab.udp_client.send("tftp-receive")
    sent = lab.udp_server("tftp-send", file=os.path.join(lab.tmp, "data.bin"))
    assert "timed out" in sent.get("error", ""), sent
    assert "timed out" in lab.udp_client.answer().get("error", "")


@pytest.mark.parametrize("source,target", DIRECTIONS)
def test_sip_call_media_expectations_move_with_their_binding(make_lab, source, target):
    lab = make_lab(source, target)
    lab.udp_client("sip-invite", server=SERVER, rtp=16384)
    invite = lab.udp_server("sip-wait-invite")
    # The source's SIP ALG rewrote the SDP: media is to be sent to the NAT's address.
    assert invite["from"][0] == NAT_ADDR and invite["c"] == ["c=IN IP4 " + NAT_ADDR], invite
    media_port = int(invite["m"][0].split()[1])

    entries, members, container, dumped = migrate(lab, proto=17)
    assert members == [{alg_model.HELPER: "sip"}]
    items = sorted(container[alg_model.EXPECTATIONS]["expectation"], key=lambda item: item["dst-port"])
    assert [(i["dst-address"], i["dst-port"], i["class"], i["expectfn"]) for i in items] == [
        (NAT_ADDR, media_port, 1, "sip"), (NAT_ADDR, media_port + 1, 1, "sip")]  # RTP and RTCP, audio
    assert [i["nat"] for i in items] == [{"direction": "reply", "address": CLIENT, "port": 16384},
                                         {"direction": "reply", "address": CLIENT, "port": 16385}]
    on_target = in_netns(lab.ns("nat2"), exp_dump)
    assert sorted(comparable(e) for e in on_target) == sorted(comparable(e) for e in dumped)

    lab.udp_client.send("rtp-receive")
    assert lab.udp_server("rtp-send", sport=40000, to=NAT_ADDR, port=media_port, data="rtp 1") == {}
    assert lab.udp_client.answer() == {"data": "rtp 1", "from": [SERVER, 40000]}
    lab.udp_client.send("rtp-receive", port=16385)  # RTCP, through the other expectation
    assert lab.udp_server("rtp-send", sport=40001, to=NAT_ADDR, port=media_port + 1, data="rtcp 1") == {}
    assert lab.udp_client.answer() == {"data": "rtcp 1", "from": [SERVER, 40001]}


# --- the kernel's rules, on synthetic entries -------------------------------------------------------

@pytest.fixture
def solo_ns(netns_prefix):
    name = netns_prefix + "solo"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "netns", "exec", name, "nft", "-f", "-", input=NAT_RULES["nft"])
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def test_kernel_wants_the_helper_before_expectations_and_links_children_to_masters(solo_ns):
    control = FlowTuple(socket.AF_INET, 6, CLIENT, SERVER, 40000, 21)
    bare = FlowTuple(socket.AF_INET, 6, CLIENT, SERVER, 40001, 21)
    data = FlowTuple(socket.AF_INET, 6, CLIENT, SERVER, 40002, 50000)
    seen = IPS_SEEN_REPLY | IPS_ASSURED
    created = in_netns(solo_ns, ct_create, [
        (control, inverse(control), seen, 600, TCP_ESTABLISHED, HelperState("ftp", SeqAdjust(1000, 0, 2), SeqAdjust(5, 0, 0))),
        (bare, inverse(bare), seen, 600, TCP_ESTABLISHED, None),
        (data, inverse(data), seen, 600, TCP_ESTABLISHED, HelperState(master=control)),
    ])
    assert created == []
    dumped = dict((e[0], e) for e in in_netns(solo_ns, ct_dump))
    assert dumped[control][5] == HelperState("ftp", SeqAdjust(1000, 0, 2), SeqAdjust(5, 0, 0))
    assert dumped[control][2] & (IPS_HELPER | IPS_SEQ_ADJUST) == IPS_HELPER | IPS_SEQ_ADJUST
    assert dumped[data][5].master == control and dumped[data][2] & IPS_EXPECTED
    assert dumped[bare][5] == HelperState()

    def expecting(master, dport):
        tup = FlowTuple(socket.AF_INET, 6, CLIENT, SERVER, 0, dport)
        return Expectation(master, tup, exact_mask(tup)._replace(sport=0), 60, "ftp", 0, 0, 0,
                           FlowTuple(socket.AF_INET, 6, "0.0.0.0", "0.0.0.0", dport, 0), "nat-follow-master")

    unknown = FlowTuple(socket.AF_INET, 6, CLIENT, SERVER, 40003, 21)
    refused = in_netns(solo_ns, exp_create, [expecting(bare, 50001), expecting(unknown, 50002), expecting(control, 50003)])
    assert [code for _exp, code in refused] == [errno.EOPNOTSUPP, errno.ENOENT]
    made, = in_netns(solo_ns, exp_dump)
    assert made.master == control and made.tuple.dport == 50003 and 50 <= made.timeout <= 60


def test_ipv6_expectation_round_trips_through_the_model_and_the_kernel(solo_ns):
    control = FlowTuple(socket.AF_INET6, 6, "2001:db8::2", "2001:db8:1::9", 40000, 21)
    assert in_netns(solo_ns, ct_create, [
        (control, inverse(control), IPS_SEEN_REPLY | IPS_ASSURED, 600, TCP_ESTABLISHED, HelperState("ftp"))]) == []
    item = {"index": 1, "master": 1, "transport-protocol": 6, "src-address": "2001:db8:1::9/128",
            "dst-address": "2001:db8::2", "dst-port": 50010, "lifetime": 90, "helper": "ftp",
            "nat": {"direction": "reply", "port": 50011}, "expectfn": "nat-follow-master"}
    exp = alg_model.expectation_of_item(item, {1: control})
    assert in_netns(solo_ns, exp_create, [exp]) == []
    dumped, = in_netns(solo_ns, exp_dump)
    assert comparable(dumped) == comparable(exp)
    back = alg_model.expectation_item(dumped, 1, 1)
    assert 80 <= back.pop("lifetime") <= 90
    assert back == dict((key, value) for key, value in item.items() if key != "lifetime")
