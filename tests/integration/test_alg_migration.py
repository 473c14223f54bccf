"""FTP, TFTP and SIP sessions through a NAT with ALGs keep working after `ansible-playbook migrate_nat.yml`.

The lab of lab/nfstate_lab.py (client 192.0.2.10, server 203.0.113.20, nat-a iptables-legacy,
nat-b nftables), with an FTP server (pyftpdlib) and the scripted TFTP and SIP peers of
alg_peers.py, each paused between two packets. Both NATs forward through a chain with policy drop
that lets through only established/related packets and new control connections (FTP 21, TFTP 69,
SIP 5060): a data connection, a TFTP answer or RTP/RTCP media pass only as expected (RELATED)
ones. The source assigns the FTP, TFTP and SIP helpers by its raw-table rules.

- There and back, the three ALGs in one run each way: before it, an FTP session paused after PASV,
  a TFTP read request its server has not answered yet, a SIP INVITE whose media has not flowed.
  legacy -> nftables: the target holds the source's expectations with their NAT bindings, the FTP
  data connection works, the TFTP answer (from a new server port) completes the transfer and RTP
  and RTCP reach the client's offered ports from the server's, as on the source; the rendered
  helper rules serve new sessions. Then, through nftables, an active FTP transfer (PORT rewritten,
  sequence adjusted), a new TFTP request and a new call, and the way back nftables -> legacy: the
  next FTP command and data connections, the TFTP transfer and the media work.
- The control: the same pauses moved with nfstate_alg_state=false (the sessions alone, as the
  model without ALG state would): the FTP data connection, the TFTP answer and the media are lost.
"""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab
from ansible_collections.nfstate.migration.plugins.module_utils import alg_model
from ansible_collections.nfstate.migration.plugins.module_utils.conntrack_expect import ExpectTable
from ansible_collections.nfstate.migration.plugins.module_utils.templates import alg_iptables
from alg_peers import UDP_PEER_CODE, Peer, read_line
from ftp_client import CLIENT_CODE
from netns_call import in_netns

HOST_PYTHON = "/usr/bin/python3"
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _have_pyftpdlib():
    return os.path.exists(HOST_PYTHON) and subprocess.run(
        [HOST_PYTHON, "-c", "import pyftpdlib"], capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not _have_pyftpdlib(), reason="needs python3-pyftpdlib"),
]

TIMEOUT = 6  # seconds a client operation may take before it counts as failed
PAYLOAD_SIZE = 100000
ALGS = [{"name": "ftp"}, {"name": "tftp"}, {"name": "sip"}]
# A TFTP request waits for its answer through a whole playbook run (30-45 s here): longer than the
# kernel's 30 s for a UDP entry that has seen no reply. (A SIP master is kept by its helper.)
UDP_UNREPLIED_TIMEOUT = 600

FORWARD = {
    "iptables-legacy": ("*filter\n:FORWARD DROP [0:0]\n"
                        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                        "-A FORWARD -i {inside} -p tcp -m tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT\n"
                        "-A FORWARD -i {inside} -p udp -m multiport --dports 69,5060 -m conntrack --ctstate NEW -j ACCEPT\n"
                        "COMMIT\n"),
    "nftables": ("table inet alfilter {{\n  chain forward {{\n"
                 "    type filter hook forward priority 0; policy drop;\n"
                 "    ct state established,related accept\n"
                 "    iifname \"{inside}\" tcp dport 21 ct state new accept\n"
                 "    iifname \"{inside}\" udp dport {{ 69, 5060 }} ct state new accept\n  }}\n}}\n"),
}

SERVER_CODE = r"""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, PassiveDTP
from pyftpdlib.servers import FTPServer

# A migration on a loaded machine takes minutes: the paused session must outlive it.
FTPHandler.timeout = PassiveDTP.timeout = 1800

authorizer = DummyAuthorizer()
authorizer.add_user("user", "secret", sys.argv[2], perm="elr")
FTPHandler.authorizer = authorizer
FTPHandler.permit_foreign_addresses = True  # active mode: the PORT address is the NAT's
server = FTPServer((sys.argv[1], 21), FTPHandler)
print("READY", flush=True)
server.serve_forever()
"""


class Peers(object):
    """The FTP server and its scripted client, the TFTP/SIP server and one client each for TFTP and
    SIP (so that their waits run side by side), in the lab's namespaces, ended by PID."""

    def __init__(self, lab):
        self.lab = lab
        self.tmp = tempfile.mkdtemp(prefix="nfstate-alg-")
        self.payload = os.urandom(PAYLOAD_SIZE)
        self.file = os.path.join(self.tmp, "data.bin")
        with open(self.file, "wb") as handle:
            handle.write(self.payload)
        self.procs = []
        self.server_ip = lab.addresses["server"][4]
        try:
            server = self._spawn("server", SERVER_CODE, self.server_ip, self.tmp)
            assert read_line(server, 10).strip() == "READY"
            self.ftp_client = self.new_client()
            self.udp_server = self._peer("server", "server", self.server_ip)
            self.tftp = self._peer("client", "client", lab.addresses["client"][4])
            self.sip = self._peer("client", "client", lab.addresses["client"][4])
            for peer in (self.udp_server, self.tftp, self.sip):
                assert "ready" in peer.answer()
        except BaseException:
            self.close()  # the fixture never gets an object to close
            raise

    def new_client(self):
        return self._peer("client", None, self.server_ip)

    def _peer(self, role, udp_role, address):
        if udp_role is None:
            proc = self._spawn(role, CLIENT_CODE, address, str(TIMEOUT))
        else:
            proc = self._spawn(role, UDP_PEER_CODE, udp_role, address, str(TIMEOUT))
        # The peers' own socket timeouts end a failing step; this one only guards against a hang.
        return Peer(proc, 3 * TIMEOUT + 5, proc.log)

    def _spawn(self, role, code, *args):
        # stderr into a file: a pipe nobody reads could fill and stall the peer.
        with open(os.path.join(self.tmp, "%s-%d.log" % (role, len(self.procs))), "w") as log:
            proc = self.lab.popen(role, [HOST_PYTHON, "-c", code] + list(args),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        proc.log = log.name
        self.procs.append(proc)
        return proc

    def ftp(self, op, client=None, **args):
        return (client or self.ftp_client)(op, **args)

    def whole(self):
        return {"sha": hashlib.sha256(self.payload).hexdigest(), "size": PAYLOAD_SIZE}

    # -- TFTP and SIP, stopped between two packets ------------------------------------------------
    def tftp_request(self):
        """A read request the server took and has not answered: {port: the client's, nat_port}."""
        port = self.tftp("tftp-rrq", server=self.server_ip)["port"]
        request = self.udp_server("tftp-wait-rrq")
        assert request["request"] == "data.bin" and request["client"][0] == self.lab.addresses["external"][4], request
        return {"port": port, "nat_port": request["client"][1]}

    def tftp_transfer(self):
        """The server answers the pending request from a new port; what the client received."""
        self.tftp.send("tftp-receive")
        sent = self.udp_server("tftp-send", file=self.file)
        return sent, self.tftp.answer()

    def sip_call(self, sport, rtp):
        """An INVITE from sport offering media on rtp (and rtp + 1): {rtp, media_port: the NAT's}."""
        self.sip("sip-invite", server=self.server_ip, sport=sport, rtp=rtp)
        invite = self.udp_server("sip-wait-invite")
        external = self.lab.addresses["external"][4]
        # The SIP helper of the NAT rewrote the SDP: media is to be sent to the NAT's address.
        assert invite["from"][0] == external and invite["c"] == ["c=IN IP4 " + external], invite
        return {"sport": sport, "rtp": rtp, "media_port": int(invite["m"][0].split()[1])}

    def media(self, call):
        """RTP and RTCP from the server to the NAT's media ports; what the client's rtp, rtp + 1 read."""
        media_port, rtp = call["media_port"], call["rtp"]
        got = []
        for offset in (0, 1):
            self.sip.send("rtp-receive", port=rtp + offset)
            assert self.udp_server("rtp-send", sport=40000 + offset, to=self.lab.addresses["external"][4],
                                   port=media_port + offset, data="media %d" % offset) == {}
            got.append(self.sip.answer())
        return got

    def media_as_sent(self):
        """What the client reads of media() when only the destination was translated, as on the
        source: the data, from the server's address and the port it sent from."""
        return [{"data": "media %d" % offset, "from": [self.server_ip, 40000 + offset]} for offset in (0, 1)]

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # ip netns exec execs the interpreter: this PID is ours
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                stream.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def forward_and_helper_rules(lab):
    """Both NATs: the drop-policy forward chain and room for a TFTP request to wait. The source
    (legacy): the FTP, TFTP and SIP helper rules."""
    for host in ("nat-a", "nat-b"):
        text = FORWARD[lab.implementation(host)].format(inside=lab.devices[host][0])
        if lab.implementation(host) == "nftables":
            lab.run(host, ["nft", "-f", "-"], input_text=text)
        else:
            lab.run(host, ["iptables-legacy-restore", "--noflush"], input_text=text)
        lab.run(host, ["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=%d" % UDP_UNREPLIED_TIMEOUT])
    rules, refused = alg_model.algs_to_rules(ALGS)
    assert refused == [] and len(rules) == 3
    lab.run("nat-a", ["iptables-legacy-restore", "--noflush"], input_text=alg_iptables.restore_payload(rules))


@pytest.fixture(scope="module")
def lab(lab_name):
    # One lab for the module: a playbook run costs far more than the lab's namespaces.
    with Lab(lab_name("am"), source_impl="iptables-legacy", target_impl="nftables") as built:
        forward_and_helper_rules(built)
        yield built


@pytest.fixture()
def peers(lab):
    made = Peers(lab)
    try:
        yield made
    finally:
        made.close()


def migrate(lab, source, target, snapshots, *extra):
    argv = [ANSIBLE_PLAYBOOK, "nfstate.migration.migrate_nat", "-e", "nfstate_source=%s" % source,
            "-e", "nfstate_target=%s" % target, "-e", "nfstate_snapshot_dir=%s" % snapshots] + list(extra)
    started = time.monotonic()
    run = subprocess.run(argv, env=lab.env, capture_output=True, text=True, check=False, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:]
    assert lab.service_holder() == target
    print("%s -> %s: %.1f s" % (source, target, time.monotonic() - started))
    return report(snapshots, source)


def report(snapshots, source):
    runs = sorted(os.listdir(snapshots))
    with open(os.path.join(snapshots, runs[-1], source, "report.json")) as handle:
        return json.load(handle)


def precopy_master(snapshots, source):
    """The mapping entry of the FTP control session whose PORT the NAT rewrote, in the pre-copy
    kept on the controller (the newcomer's session, passive only, has no such adjustment)."""
    runs = sorted(os.listdir(snapshots))
    with gzip.open(os.path.join(snapshots, runs[-1], source, "precopy.json.gz")) as handle:
        document = json.load(handle)
    entries = document["ietf-nat:nat"]["instances"]["instance"][0]["mapping-table"]["mapping-entry"]
    masters = [e for e in entries if e.get(alg_model.HELPER) == "ftp"
               and e.get(alg_model.SEQUENCE_ADJUSTMENT, {}).get("original", {}).get("offset-after")]
    assert len(masters) == 1, entries
    return masters[0]


def ftp_sessions(lab, host):
    """The conntrack listing of the FTP control and data sessions on a host (for messages)."""
    return lab.run(host, ["conntrack", "-L", "-p", "tcp", "--orig-dst", lab.addresses["server"][4]], check=False).stdout


def expectations_on(lab, host):
    return lab.run(host, ["conntrack", "-L", "expect"], check=False).stdout


def _dump_expectations():
    with ExpectTable() as table:
        return table.dump()


def expectation_table(lab, host):
    """A host's expectations as the kernel holds them, read over netlink in its namespace, without
    what the kernel renews by itself (id, remaining lifetime): master, expected tuple and mask,
    helper, class, flags, expectfn and the NAT binding."""
    return sorted((exp._replace(id=None, timeout=None) for exp in in_netns(lab.ns(host), _dump_expectations)), key=repr)


def binding(exp):
    """What the model says of an expectation, its lifetime and links aside."""
    item = alg_model.expectation_item(exp, 0, 0)
    for key in ("index", "master", "lifetime"):
        item.pop(key)
    return item


def tftp_expected(lab, nat_port, client_port):
    """The TFTP helper's expectation of the answer to a request: from any port of the server, to
    the port the NAT gave the request, translated back to the client's own port."""
    return {"transport-protocol": 17, "src-address": lab.addresses["server"][4] + "/32",
            "dst-address": lab.addresses["external"][4], "dst-port": nat_port, "helper": "tftp",
            "nat": {"direction": "reply", "port": client_port}, "expectfn": "nat-follow-master"}


def sip_expected(lab, media_port, rtp):
    """The SIP helper's RTP and RTCP expectations of an audio offer: to the NAT's media ports,
    translated to the client's offered ones."""
    return [{"transport-protocol": 17, "src-address": lab.addresses["server"][4] + "/32",
             "dst-address": lab.addresses["external"][4], "dst-port": media_port + offset, "helper": "sip",
             "class": 1, "nat": {"direction": "reply", "address": lab.addresses["client"][4], "port": rtp + offset},
             "expectfn": "sip"} for offset in (0, 1)]


def udp_bindings(table):
    return sorted((binding(exp) for exp in table if exp.helper in ("tftp", "sip")), key=lambda item: item["dst-port"])


def assert_tftp_and_sip_carried(lab, on_source, on_target, tftp, call):
    """The target holds the source's expectations, each with its master and binding; the TFTP
    request's and the call's are the helpers' own."""
    assert on_target == on_source
    expected = sorted([tftp_expected(lab, tftp["nat_port"], tftp["port"])] + sip_expected(lab, call["media_port"], call["rtp"]),
                      key=lambda item: item["dst-port"])
    assert udp_bindings(on_target) == expected, on_target


def assert_tftp_and_media_through(peers, call):
    """The TFTP answer completes the transfer, from the port the server sent from, and RTP and
    RTCP reach the client's offered ports from the server's: as they would on the source. Then the
    helper of the re-created SIP master reads the call's next INVITE (a new offer) on this host."""
    sent, received = peers.tftp_transfer()
    assert "error" not in sent, sent
    assert received == dict(peers.whole(), **{"from": [peers.server_ip, sent["port"]]}), received
    assert peers.media(call) == peers.media_as_sent()
    offer = peers.sip_call(call["sport"], call["rtp"] + 2)  # rewritten, on the same master
    assert peers.media(offer) == peers.media_as_sent()  # and its expectations used


def test_ftp_tftp_and_sip_move_there_and_back(lab, peers, tmp_path):
    ftp = peers.ftp
    assert "error" not in ftp("login")
    assert ftp("retr", passive=True) == peers.whole()  # through the source, as it is
    port = ftp("pasv")["port"]  # pause: the source's FTP helper expects the data connection
    assert "dport=%d" % port in expectations_on(lab, "nat-a")
    tftp = peers.tftp_request()  # pause: the server took the request, has not answered
    call = peers.sip_call(5060, 16384)  # pause: the INVITE is in, no media yet
    on_source = expectation_table(lab, "nat-a")
    assert len(on_source) == 4, on_source

    there = migrate(lab, "nat-a", "nat-b", tmp_path / "there")
    # The target holds the expectations of the re-created masters, which have their helpers.
    assert_tftp_and_sip_carried(lab, on_source, expectation_table(lab, "nat-b"), tftp, call)
    assert "helper=ftp" in ftp_sessions(lab, "nat-b")
    assert there["expectations"]["pre-copy"] == 4 and there["expectations"]["delta"] == 4, there["expectations"]
    # What the SIP helper keeps to itself is said, for the call's master.
    assert [line for line in there["unsupported_sessions"] if "sip helper, without SIP dialogue" in line], there
    data = ftp("fetch-pending")
    assert data == peers.whole(), (data, ftp_sessions(lab, "nat-b"))
    assert_tftp_and_media_through(peers, call)
    print("expectation table read in the delta: %s ms" % there["cutover"]["delta"]["expectations_ms"])
    # The target got the helper rules too, rendered for nftables: a new session gets its helper.
    helpers = lab.run("nat-b", ["nft", "list", "table", "inet", "nfstate_alg"]).stdout
    for rendered in ('type "ftp" protocol tcp', 'type "tftp" protocol udp', 'type "sip" protocol udp'):
        assert rendered in helpers, helpers
    newcomer = peers.new_client()
    assert "error" not in ftp("login", client=newcomer)
    assert ftp("retr", client=newcomer, passive=True) == peers.whole()
    newcomer.proc.stdin.close()  # it logs out by ending

    # The helper of the re-created master reads the session on nftables: an active transfer, its
    # PORT rewritten to the NAT's address, which leaves a sequence adjustment on the master.
    assert ftp("retr", passive=False) == peers.whole()
    # A TFTP request and a call of their own, through nftables' rendered helpers, paused in turn.
    tftp = peers.tftp_request()
    call = peers.sip_call(5062, 16388)
    on_source = expectation_table(lab, "nat-b")

    back = migrate(lab, "nat-b", "nat-a", tmp_path / "back")
    assert back["expectations"]["delta"] == 3, back["expectations"]  # the FTP ones were used
    assert_tftp_and_sip_carried(lab, on_source, expectation_table(lab, "nat-a"), tftp, call)
    # The rewritten PORT (203,0,113,1 for 192,0,2,10) changed the payload's length: it moved along.
    precopy_master(tmp_path / "back", "nat-b")
    # Without the sequence adjustment the server would read "OP" (issue 9); with it, NOOP.
    reply = ftp("cmd", line="NOOP")
    assert reply.get("reply", "").startswith("200"), (reply, ftp_sessions(lab, "nat-a"))
    assert_tftp_and_media_through(peers, call)
    assert ftp("retr", passive=False) == peers.whole()
    assert ftp("retr", passive=True) == peers.whole()


def test_control_without_alg_state_loses_data_answer_and_media(lab, peers, tmp_path):
    assert lab.service_holder() == "nat-a"  # where the helpers' rules are
    ftp = peers.ftp
    assert "error" not in ftp("login")
    port = ftp("pasv")["port"]
    peers.tftp_request()
    media_port = peers.sip_call(5064, 16392)["media_port"]
    assert len(expectation_table(lab, "nat-a")) == 4  # there is something to lose
    assert "dport=%d" % port in expectations_on(lab, "nat-a")
    control = migrate(lab, "nat-a", "nat-b", tmp_path, "-e", "nfstate_alg_state=false")
    assert control["expectations"] == {"pre-copy": 0, "delta": 0}
    # The sessions moved, without their helpers and expectations.
    assert expectation_table(lab, "nat-b") == []
    assert "helper=" not in lab.run("nat-b", ["conntrack", "-L"]).stdout
    # All three wait side by side: each ends at its own socket's timeout.
    peers.sip.send("rtp-receive", port=16392)
    assert peers.udp_server("rtp-send", sport=40000, to=lab.addresses["external"][4], port=media_port, data="lost") == {}
    peers.tftp.send("tftp-receive")
    peers.udp_server.send("tftp-send", file=peers.file)
    answer = ftp("fetch-pending")
    assert "timed out" in answer.get("error", ""), answer
    for peer in (peers.udp_server, peers.tftp, peers.sip):  # no ACK, no block, no media
        answer = peer.answer()
        assert "timed out" in answer.get("error", ""), answer
