"""An FTP session through a NAT with an ALG keeps working after `ansible-playbook migrate_nat.yml`.

The lab of lab/nfstate_lab.py (client 192.0.2.10, server 203.0.113.20, nat-a iptables-legacy,
nat-b nftables), with an FTP server (pyftpdlib) on the server and a scripted client that pauses
between steps. Both NATs forward through a chain with policy drop that lets through only
established/related packets and new control connections: a data connection passes only as an
expected (RELATED) one. The source assigns the FTP helper by its raw-table rule.

- There and back: a passive session paused after PASV moves legacy -> nftables and its pending
  data connection works; an active transfer (PORT rewritten, sequence adjusted) then runs through
  nftables, and the session moves back nftables -> legacy: the next command and a new active data
  connection work.
- The control: the same passive pause moved with nfstate_alg_state=false (the sessions alone, as
  the model without ALG state would) loses its data connection, as issue 9 measured.
"""

import gzip
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab
from ansible_collections.nfstate.migration.plugins.module_utils import alg_model
from ansible_collections.nfstate.migration.plugins.module_utils.templates import alg_iptables
from ftp_client import CLIENT_CODE

HOST_PYTHON = "/usr/bin/python3"
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _have_pyftpdlib():
    return os.path.exists(HOST_PYTHON) and subprocess.run(
        [HOST_PYTHON, "-c", "import pyftpdlib"], capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not _have_pyftpdlib(), reason="needs python3-pyftpdlib"),
]

LAB_NAME = os.environ.get("NFSTATE_TEST_ALG_LAB", "alftp")
TIMEOUT = 6  # seconds a client operation may take before it counts as failed
PAYLOAD_SIZE = 100000

FORWARD = {
    "iptables-legacy": ("*filter\n:FORWARD DROP [0:0]\n"
                        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                        "-A FORWARD -i {inside} -p tcp -m tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT\n"
                        "COMMIT\n"),
    "nftables": ("table inet alfilter {{\n  chain forward {{\n"
                 "    type filter hook forward priority 0; policy drop;\n"
                 "    ct state established,related accept\n"
                 "    iifname \"{inside}\" tcp dport 21 ct state new accept\n  }}\n}}\n"),
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


class Ftp(object):
    """The FTP server and one scripted client in the lab's namespaces, ended by PID."""

    def __init__(self, lab):
        self.lab = lab
        self.tmp = tempfile.mkdtemp(prefix="nfstate-alftp-")
        self.payload = os.urandom(PAYLOAD_SIZE)
        with open(os.path.join(self.tmp, "data.bin"), "wb") as handle:
            handle.write(self.payload)
        self.procs = []
        server = self._spawn("server", SERVER_CODE, lab.addresses["server"][4], self.tmp)
        assert self._line(server, 10).strip() == "READY"
        self.client = self.new_client()

    def new_client(self):
        return self._spawn("client", CLIENT_CODE, self.lab.addresses["server"][4], str(TIMEOUT))

    def _spawn(self, role, code, *args):
        # stderr into a file: a pipe nobody reads could fill and stall the peer.
        with open(os.path.join(self.tmp, "%s.log" % role), "w") as log:
            proc = self.lab.popen(role, [HOST_PYTHON, "-c", code] + list(args), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def _line(proc, timeout):
        if not select.select([proc.stdout], [], [], timeout)[0]:
            raise AssertionError("no answer within %s s" % timeout)
        return proc.stdout.readline()

    def __call__(self, op, client=None, **args):
        client = client or self.client
        args["op"] = op
        client.stdin.write(json.dumps(args) + "\n")
        client.stdin.flush()
        return json.loads(self._line(client, 3 * TIMEOUT + 5) or "{}")

    def whole(self):
        return {"sha": hashlib.sha256(self.payload).hexdigest(), "size": PAYLOAD_SIZE}

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # ip netns exec execs the interpreter: this PID is ours
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                stream.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def forward_and_helper_rules(lab):
    """Both NATs: the drop-policy forward chain. The source (legacy): the FTP helper rule."""
    for host in ("nat-a", "nat-b"):
        text = FORWARD[lab.implementation(host)].format(inside=lab.devices[host][0])
        if lab.implementation(host) == "nftables":
            lab.run(host, ["nft", "-f", "-"], input_text=text)
        else:
            lab.run(host, ["iptables-legacy-restore", "--noflush"], input_text=text)
    rules, refused = alg_model.algs_to_rules([{"name": "ftp"}])
    assert refused == [] and rules
    lab.run("nat-a", ["iptables-legacy-restore", "--noflush"], input_text=alg_iptables.restore_payload(rules))


@pytest.fixture(scope="module")
def lab():
    # One lab for the module: a playbook run costs far more than the lab's namespaces.
    with Lab(LAB_NAME, source_impl="iptables-legacy", target_impl="nftables") as built:
        forward_and_helper_rules(built)
        yield built


@pytest.fixture()
def ftp(lab):
    client = Ftp(lab)
    try:
        yield client
    finally:
        client.close()


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


def test_ftp_session_moves_there_and_back_passive_then_active(lab, ftp, tmp_path):
    assert "error" not in ftp("login")
    assert ftp("retr", passive=True) == ftp.whole()  # through the source, as it is
    port = ftp("pasv")["port"]  # pause: the source's FTP helper expects the data connection
    assert "dport=%d" % port in expectations_on(lab, "nat-a")

    there = migrate(lab, "nat-a", "nat-b", tmp_path / "there")
    # The target holds the expectation of the re-created master, which has its helper.
    assert "dport=%d" % port in expectations_on(lab, "nat-b"), ftp_sessions(lab, "nat-b")
    assert "helper=ftp" in ftp_sessions(lab, "nat-b")
    assert there["expectations"]["pre-copy"] == 1 and there["expectations"]["delta"] == 1, there["expectations"]
    data = ftp("fetch-pending")
    assert data == ftp.whole(), (data, ftp_sessions(lab, "nat-b"))
    print("expectation table read in the delta: %s ms" % there["cutover"]["delta"]["expectations_ms"])
    # The target got the helper rules too, rendered for nftables: a new session gets its helper.
    assert 'type "ftp" protocol tcp' in lab.run("nat-b", ["nft", "list", "table", "inet", "nfstate_alg"]).stdout
    newcomer = ftp.new_client()
    assert "error" not in ftp("login", client=newcomer)
    assert ftp("retr", client=newcomer, passive=True) == ftp.whole()
    newcomer.stdin.close()  # it logs out by ending

    # The helper of the re-created master reads the session on nftables: an active transfer, its
    # PORT rewritten to the NAT's address, which leaves a sequence adjustment on the master.
    assert ftp("retr", passive=False) == ftp.whole()

    back = migrate(lab, "nat-b", "nat-a", tmp_path / "back")
    assert back["expectations"]["delta"] == 0
    # The rewritten PORT (203,0,113,1 for 192,0,2,10) changed the payload's length: it moved along.
    precopy_master(tmp_path / "back", "nat-b")
    # Without the sequence adjustment the server would read "OP" (issue 9); with it, NOOP.
    reply = ftp("cmd", line="NOOP")
    assert reply.get("reply", "").startswith("200"), (reply, ftp_sessions(lab, "nat-a"))
    assert ftp("retr", passive=False) == ftp.whole()
    assert ftp("retr", passive=True) == ftp.whole()


def test_control_without_alg_state_loses_the_pending_data_connection(lab, ftp, tmp_path):
    assert lab.service_holder() == "nat-a"  # where the FTP helper's rule is
    assert "error" not in ftp("login")
    port = ftp("pasv")["port"]
    assert "dport=%d" % port in expectations_on(lab, "nat-a")  # there is something to lose
    control = migrate(lab, "nat-a", "nat-b", tmp_path, "-e", "nfstate_alg_state=false")
    assert control["expectations"] == {"pre-copy": 0, "delta": 0}
    assert "dport=%d" % port not in expectations_on(lab, "nat-b") and "helper=ftp" not in ftp_sessions(lab, "nat-b")
    answer = ftp("fetch-pending")
    assert "timed out" in answer.get("error", ""), answer
