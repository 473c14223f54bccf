# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Several labs as one fleet: one NAT pair per lab, all in one inventory, for a run that migrates
them all (-e nfstate_sources=nfstate_fleet_sources).

    with Fleet("q", 4) as fleet:                 # labs q1..q4 up ... always down
        subprocess.run(["ansible-playbook", "nfstate.migration.migrate_nat",
                        "-e", "nfstate_sources=%s" % fleet.SOURCES], env=fleet.env)
        fleet.labs[0].service_holder()           # each lab is a Lab as ever (flows, faults)

The hosts are renamed per lab (q1-nat-a, q1-nat-b, ...) and keep their lab's connection settings
(address, key, SSH arguments) and variables; each source names its target in nfstate_migrate_to.
One ansible.cfg (forks for every pair at once) and one control path directory serve them all.
With carry_targets, the inventory holds the sources only, each carrying its target's variables in
nfstate_migrate_to_host (the layout for AWX job slicing).
"""

import os
import shutil
import subprocess
import tempfile

import yaml

if __package__:  # ansible_collections.nfstate.migration.lab, as the tests import it
    from .nfstate_lab import NAT_HOSTS, Lab, _write, _yaml, ansible_cfg
else:  # lab/ on sys.path, as the benchmarks and the demo have it
    from nfstate_lab import NAT_HOSTS, Lab, _write, _yaml, ansible_cfg

SOURCES = "nfstate_fleet_sources"
TARGETS = "nfstate_fleet_targets"


class Fleet:
    """Labs PREFIX1..PREFIXn, one pair (nat-a -> nat-b) each, as one inventory."""

    SOURCES = SOURCES
    TARGETS = TARGETS

    def __init__(self, prefix, count, forks=None, carry_targets=False, workdir=None, **lab_options):
        self.labs = [Lab("%s%d" % (prefix, index), **lab_options) for index in range(1, count + 1)]
        self.workdir = workdir or os.path.join(tempfile.gettempdir(), "nfstate-fleet-%s" % prefix)
        self.forks = max(8, count) if forks is None else forks
        self.carry_targets = carry_targets

    # ---- naming -------------------------------------------------------------------------------
    @staticmethod
    def host(lab, host="nat-a"):
        """The fleet's name of a lab's host."""
        return "%s-%s" % (lab.name, host)

    @property
    def sources(self):
        return [self.host(lab, "nat-a") for lab in self.labs]

    @property
    def targets(self):
        return [self.host(lab, "nat-b") for lab in self.labs]

    def lab_of(self, fleet_host):
        return next(lab for lab in self.labs if fleet_host.startswith(lab.name + "-"))

    @property
    def inventory_path(self):
        return os.path.join(self.workdir, "inventory.yml")

    @property
    def ansible_cfg_path(self):
        return os.path.join(self.workdir, "ansible.cfg")

    @property
    def control_path_dir(self):
        return os.path.join(self.workdir, "cp")

    # ---- the inventory --------------------------------------------------------------------------
    @staticmethod
    def lab_hostvars(lab):
        """Each NAT host's variables in its lab's inventory, its group's folded in."""
        with open(lab.inventory_path) as handle:
            group = yaml.safe_load(handle)["all"]["children"]["nfstate_nat"]
        return {host: dict(group.get("vars") or {}, **(group["hosts"][host] or {})) for host in NAT_HOSTS}

    def inventory(self, carry_targets=None):
        """The fleet's inventory as a dict: the sources (each naming its target) and the targets,
        or with carry_targets the sources alone, each carrying its target's variables."""
        carry = self.carry_targets if carry_targets is None else carry_targets
        sources, targets = {}, {}
        for lab in self.labs:
            hostvars = self.lab_hostvars(lab)
            source = dict(hostvars["nat-a"], nfstate_migrate_to=self.host(lab, "nat-b"))
            if carry:
                source["nfstate_migrate_to_host"] = hostvars["nat-b"]
            else:
                targets[self.host(lab, "nat-b")] = hostvars["nat-b"]
            sources[self.host(lab, "nat-a")] = source
        children = {SOURCES: {"hosts": sources}}
        if targets:
            children[TARGETS] = {"hosts": targets}
        return {"all": {"children": children}}

    def _write_files(self):
        os.makedirs(self.control_path_dir, mode=0o700, exist_ok=True)
        _write(self.inventory_path, "# nfstate fleet of labs %s (written by lab/fleet.py)\n%s\n" % (
            ", ".join(lab.name for lab in self.labs), _yaml(self.inventory())), 0o644)
        _write(self.ansible_cfg_path, ansible_cfg(self.inventory_path, self.control_path_dir, self.forks), 0o644)

    def env_overrides(self):
        over = dict(self.labs[0].env_overrides())  # the collection's path (the checkout), as a lab gives it
        over.update(ANSIBLE_CONFIG=self.ansible_cfg_path, ANSIBLE_INVENTORY=self.inventory_path,
                    ANSIBLE_SSH_CONTROL_PATH_DIR=self.control_path_dir)
        return over

    @property
    def env(self):
        """The environment for ansible-playbook against the whole fleet."""
        return dict(os.environ, **self.env_overrides())

    # ---- up and down ----------------------------------------------------------------------------
    def up(self):
        for lab in self.labs:
            lab.up()
        self._write_files()
        return self

    def _ssh_masters_exit(self):
        """The connection-sharing masters of the fleet's control path (the labs end only their own)."""
        try:
            sockets = [os.path.join(self.control_path_dir, name) for name in os.listdir(self.control_path_dir)]
        except OSError:
            return
        for path in sockets:
            subprocess.run(["ssh", "-o", "ControlPath=%s" % path, "-O", "exit", "nfstate-fleet"],
                           capture_output=True, check=False, timeout=5)

    def down(self):
        """Remove every lab of the fleet and its files; raises the first lab's error after trying all."""
        self._ssh_masters_exit()
        errors = []
        for lab in self.labs:
            try:
                lab.down()
            except Exception as error:  # pylint: disable=broad-except
                errors.append(error)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()
        return False
