"""The execution environment: `ansible-builder create` on docs/awx/execution-environment.yml writes a
build context (no container runtime needed) that installs this collection, and what the collection
adds to the image is only what the controller needs: requirements.txt's Python packages and an SSH
client, none of the managed hosts' NAT tools.

The image build itself needs a container runtime; here its two steps that concern the collection
run as the Containerfile runs them: the galaxy stage's install from the context, and the builder
stage's introspection of what was installed (ansible-builder's own script, from the context).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from bindep.depends import Depends

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
DEFINITION = os.path.join(REPO, "docs", "awx", "execution-environment.yml")
TARBALL = "nfstate-migration.tar.gz"  # the name the definition expects beside it
# What the managed hosts or the lab need, and an execution environment never does.
HOST_PACKAGES = {"iptables", "nftables", "python3-nftables", "conntrack", "conntrack-tools", "arping",
                 "iputils", "iputils-arping", "ndisc6", "iproute2", "iproute", "ipset", "socat", "tcpdump"}
RPM_PROFILES = ["platform:rpm", "platform:redhat", "platform:rhel", "platform:rhel-9"]
DPKG_PROFILES = ["platform:dpkg", "platform:debian", "platform:debian-12"]


def run(argv, **kwargs):
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert res.returncode == 0, "%s\n%s\n%s" % (" ".join(argv), res.stdout[-3000:], res.stderr[-3000:])
    return res


def requirement_names(lines):
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower())
    return names


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """The definition as shipped, with the collection built beside it, and the context it makes."""
    work = tmp_path_factory.mktemp("ee")
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(work), REPO])
    built = [name for name in os.listdir(work) if name.endswith(".tar.gz")]
    assert len(built) == 1, built
    os.rename(work / built[0], work / TARBALL)
    shutil.copy(DEFINITION, work / "execution-environment.yml")
    run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", "context",
         "--output-filename", "Containerfile"], cwd=str(work))
    return work / "context"


@pytest.fixture(scope="module")
def galaxy_stage(context, tmp_path_factory):
    """The galaxy stage: its install command, run in the context's _build as the image runs it."""
    containerfile = (context / "Containerfile").read_text()
    command = [line for line in containerfile.splitlines() if "ansible-galaxy collection install" in line]
    assert len(command) == 1, containerfile
    assert "-r requirements.yml" in command[0]
    collections = tmp_path_factory.mktemp("usr-share-ansible") / "collections"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1")
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r", "requirements.yml",
         "--collections-path", str(collections)], cwd=str(context / "_build"), env=env)
    return collections


@pytest.fixture(scope="module")
def introspected(context, galaxy_stage, tmp_path_factory):
    """The builder stage: ansible-builder's introspection of the installed collections."""
    out = tmp_path_factory.mktemp("src")
    run([sys.executable, str(context / "_build" / "scripts" / "introspect.py"), "introspect", str(galaxy_stage),
         "--write-pip=%s" % (out / "requirements.txt"), "--write-bindep=%s" % (out / "bindep.txt")])
    return {"python": (out / "requirements.txt").read_text().splitlines(),
            "system": (out / "bindep.txt").read_text()}


def test_collection_meta_points_at_the_requirement_files():
    with open(os.path.join(REPO, "meta", "execution-environment.yml")) as handle:
        meta = yaml.safe_load(handle)
    assert meta == {"version": 3, "dependencies": {"python": "requirements.txt", "system": "bindep.txt"}}


def test_context_installs_this_collection(context, galaxy_stage):
    with open(os.path.join(REPO, "galaxy.yml")) as handle:
        galaxy = yaml.safe_load(handle)
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert requirements["collections"] == [{"name": TARBALL, "type": "file"}]
    with tarfile.open(context / "_build" / TARBALL) as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
    assert (manifest["namespace"], manifest["name"], manifest["version"]) == (
        galaxy["namespace"], galaxy["name"], galaxy["version"])
    # The Containerfile copies _build to /build and installs from there, then hands the result on.
    containerfile = (context / "Containerfile").read_text()
    assert "COPY _build /build" in containerfile
    assert "COPY --from=galaxy /usr/share/ansible /usr/share/ansible" in containerfile
    installed = galaxy_stage / "ansible_collections" / "nfstate" / "migration"
    with open(installed / "MANIFEST.json") as handle:
        assert json.load(handle)["collection_info"]["version"] == galaxy["version"]
    assert (installed / "playbooks" / "migrate_nat.yml").is_file()
    assert (installed / "meta" / "execution-environment.yml").is_file()


def test_image_gets_requirements_txt(introspected):
    with open(os.path.join(REPO, "requirements.txt")) as handle:
        wanted = requirement_names(handle)
    assert wanted >= {"pyang", "yangson"}
    assert requirement_names(introspected["python"]) == wanted


def test_image_gets_none_of_the_hosts_packages(introspected):
    depends = Depends(introspected["system"])
    for profiles in (RPM_PROFILES, DPKG_PROFILES):
        packages = {rule[0] for rule in depends.active_rules(profiles)}
        assert not packages & HOST_PACKAGES, (profiles, packages)
        # The controller's one system need: an SSH client to reach the hosts.
        assert packages and packages <= {"openssh-clients", "openssh-client"}, (profiles, packages)


def test_bindep_lists_only_controller_packages():
    with open(os.path.join(REPO, "bindep.txt")) as handle:
        depends = Depends(handle.read())
    for profiles in (RPM_PROFILES, DPKG_PROFILES):
        assert not {rule[0] for rule in depends.active_rules(profiles)} & HOST_PACKAGES


def test_definition_installs_ansible_and_runner_on_a_supported_python():
    with open(DEFINITION) as handle:
        definition = yaml.safe_load(handle)
    assert definition["version"] == 3
    deps = definition["dependencies"]
    assert deps["ansible_core"]["package_pip"].startswith("ansible-core")
    assert deps["ansible_runner"]["package_pip"].startswith("ansible-runner")
    # The README's controller requirement: Python 3.11+.
    version = re.search(r"python3\.(\d+)$", deps["python_interpreter"]["python_path"])
    assert version and int(version.group(1)) >= 11
    # The collection's own requirements arrive by introspection, not a second copy here.
    assert "python" not in deps and "system" not in deps
