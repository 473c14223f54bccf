"""The molecule scenario (extensions/molecule/default) passes: `molecule test` from the repository
root builds the lab, migrates nat-a -> nat-b under live flows, verifies, migrates back under fresh
flows, and tears the lab down. The lab is removed here as well, whatever molecule did."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.nfstate.migration.lab.nfstate_lab import NAT_HOSTS, ROLES, Lab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO = "default"
MOLECULE = os.path.join(os.path.dirname(sys.executable), "molecule")
TIMEOUT = 420  # seconds; a run takes well under three minutes

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(not os.path.exists(MOLECULE), reason="molecule is not installed next to %s" % sys.executable),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "arping", "nft"))
                       or not os.path.exists("/usr/sbin/sshd"),
                       reason="needs iproute2, arping, nftables and openssh-server"),
]


def scenario_lab_name():
    """The lab name the scenario uses, from its molecule.yml (the one place it is written)."""
    with open(os.path.join(REPO, "extensions", "molecule", SCENARIO, "molecule.yml")) as handle:
        return yaml.safe_load(handle)["ansible"]["env"]["NFSTATE_LAB"]


def molecule_env():
    """This environment without Ansible or molecule settings of its own (a lab's exported env would
    bring another inventory), with the venv's tools on PATH and wide, uncoloured output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update({"NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1", "PY_COLORS": "0", "COLUMNS": "200"})
    return env


def run_molecule(argv, timeout):
    """Run molecule in its own process group; on timeout end that group (ansible-playbook and
    its children included) and report what was printed so far."""
    proc = subprocess.Popen(argv, cwd=REPO, env=molecule_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                output = proc.communicate(timeout=10)[0]
                break
            except subprocess.TimeoutExpired:
                continue
        pytest.fail("molecule test did not finish within %ss:\n%s" % (timeout, (output or "")[-5000:]))
    return proc.returncode, re.sub(r"\x1b\[[0-9;]*m", "", output)


def test_molecule_scenario_passes():
    name = scenario_lab_name()
    lab = Lab(name)
    try:
        started = time.monotonic()
        returncode, output = run_molecule([MOLECULE, "test", "-s", SCENARIO], TIMEOUT)
        seconds = time.monotonic() - started
        assert returncode == 0, output[-8000:]
        # Both ways, with the implementations the lab gives each host.
        assert "Migrated nat-a (iptables) to nat-b (nftables)" in output, output[-8000:]
        assert "Migrated nat-b (nftables) to nat-a (iptables)" in output, output[-8000:]
        # The flow tables of both directions, every flow whole (verify and side_effect).
        for flow in ("tcp4", "tcp6", "udp4", "udp6", "ping4", "ping6", "fwd4", "fwd6"):
            assert len(re.findall(r'"%s\s+yes\s' % flow, output)) == 2, (flow, output[-8000:])
        # molecule's own destroy removed the lab.
        status = lab.status()
        assert not any(status["namespaces"][role]["exists"] for role in ROLES), status
        assert not any(status["root_veths"][host]["exists"] for host in NAT_HOSTS), status
        print("molecule test -s %s: %.1f s" % (SCENARIO, seconds))
    finally:
        lab.down()
