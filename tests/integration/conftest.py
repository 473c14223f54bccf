"""The integration tests' one family of lab fixtures, built from labs.py (namespaces, veth pairs, a NAT
site, NAT hosts driven by ansible-playbook) and lab/nfstate_lab.py (two NAT hosts with sshd).

Names: the suite runs with `pytest -n 2 --dist loadfile`, and several people may run it on one
machine. Every name a fixture makes starts with NFSTATE_TEST_PREFIX (default "t") and holds the
pytest worker's number and a short tag of the test file: namespaces are PREFIX WORKER TAG PID-short
(the PID, so that a namespace left behind by a killed run never blocks the next one), and
lab/nfstate_lab.py labs, whose names have 8 characters at most, PREFIX TAG WORKER.
"""

import os
import re

import pytest

# labs.py and lab/nfstate_lab.py are imported by the fixtures, not here: a module of the collection
# imported while conftest.py loads comes in beside pytest-ansible's collection finder, which then
# refuses the test files' own imports of the collection ("collection metadata was not loaded").


def _prefix():
    return os.environ.get("NFSTATE_TEST_PREFIX", "t")


def _worker():
    """"0" for xdist's gw0 and so on; "" when the tests run in one process."""
    return re.sub(r"\D", "", os.environ.get("PYTEST_XDIST_WORKER", ""))


def file_tag(module_name):
    """test_conntrack_driver -> "cd": the initials of the file's name after test_."""
    words = module_name.rsplit(".", 1)[-1].split("_")
    return "".join(word[0] for word in words[1:] if word)


def namespace_prefix(module_name):
    return "%s%s%s%d-" % (_prefix(), _worker(), file_tag(module_name), os.getpid())


@pytest.fixture(scope="session")
def lab_name():
    """lab_name(tag) gives a lab/nfstate_lab.py Lab name of its 8 characters at most, unique per worker."""
    def name(tag):
        made = "%s%s%s" % (_prefix(), tag, _worker())
        assert len(made) <= 8, "lab name %r is longer than 8 characters: shorten the tag or NFSTATE_TEST_PREFIX" % made
        return made
    return name


@pytest.fixture
def netns_prefix(request):
    """The prefix of the namespaces a test file names itself (namespace_prefix of its module)."""
    return namespace_prefix(request.module.__name__)


@pytest.fixture
def netns_lab(request):
    """Namespaces for one test (labs.Namespaces), removed with every process started in them."""
    from labs import Namespaces
    spaces = Namespaces(namespace_prefix(request.module.__name__))
    try:
        yield spaces
    finally:
        spaces.cleanup()


@pytest.fixture(scope="module")
def module_netns_lab(request):
    """As netns_lab, shared by the tests of one file (its names apart from netns_lab's)."""
    from labs import Namespaces
    spaces = Namespaces(namespace_prefix(request.module.__name__) + "m-")
    try:
        yield spaces
    finally:
        spaces.cleanup()


@pytest.fixture
def nat_site(netns_lab):
    """nat_site(tag, port_range) -> (client, nat, server) namespaces in netns_lab: a client behind a
    NAT that source-translates to 198.51.100.1 with the given port range, and a server outside."""
    from labs import nat_site as build_nat_site

    def build(tag, port_range):
        return build_nat_site(netns_lab, tag, port_range)
    return build


@pytest.fixture(scope="module")
def playbook_hosts(request, tmp_path_factory):
    """make(short) -> labs.PlaybookHost: a namespace with NAT chains where ansible-playbook runs the
    collection's modules; every one made is removed after the file's last test."""
    from labs import playbook_hosts as make_playbook_hosts
    prefix = namespace_prefix(request.module.__name__)
    with make_playbook_hosts(prefix, tmp_path_factory.mktemp(prefix.rstrip("-"))) as make:
        yield make


@pytest.fixture
def two_host_lab(request, lab_name):
    """The full lab (lab/nfstate_lab.py: client, two NAT hosts with sshd, server, a controller's
    management network), built for one test and torn down after it. Parametrize it indirectly with
    a dict of Lab options (source_impl, target_impl, target_devices, ...)."""
    from ansible_collections.nfstate.migration.lab.nfstate_lab import Lab
    with Lab(lab_name(file_tag(request.module.__name__)), **getattr(request, "param", {})) as built:
        yield built
