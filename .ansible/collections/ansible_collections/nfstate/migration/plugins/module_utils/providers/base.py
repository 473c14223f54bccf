# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every provider (one per implementation of a network function) offers, and what it runs on.

A provider reaches the host through a `host` object with two methods, as an AnsibleModule has
them: get_bin_path(name, required=False) and run_command(argv, data=None, binary_data=False)
-> (rc, stdout, stderr). LocalHost is the same over subprocess, for code that runs outside a
module (the cutover agent, tests).

The interface, which each provider implements for its implementation:
  detect(host)                    class method: the provider's own settings (an iptables backend)
  parse_nat_rules(text, ...)      the implementation's own text -> RuleState (pure)
  read_nat_rules(...)             the host's rules -> RuleState
  render_nat_rules(rules, ...)    what would be sent to make the host hold `rules` (pure)
  write_nat_rules(...), remove_nat_rules(...)
  command_lines(payload)          a payload as lines, for `commands` and `rendered`
  read_freeze(now), freeze(wanted, now), unfreeze()
  parse_firewall / read_firewall / render_firewall / write_firewall / remove_firewall,
  firewall_command_lines(payload)   the stateful firewall (providers/*_filter.py, mixed in)
  read_alg_rules(), write_alg_rules(rules, current), remove_alg_rules(current)
                                  ALG rules (helpers for new sessions) -> AlgRuleState
Parsing and rendering live in plugins/module_utils/templates/, as pure functions.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import subprocess
from collections import namedtuple

# What a host holds of ours for one function, whatever the implementation.
#   rules        canonical rules (NatRule)
#   unsupported  [{"rule", "reason"}] rules the model cannot express
#   installed    our chains or table, and the jumps into them, are all in place
#   present      anything of ours exists
#   raw          the implementation's own view, needed to render a change
RuleState = namedtuple("RuleState", ["rules", "unsupported", "installed", "present", "raw"])
EMPTY_RULES = RuleState([], [], False, False, None)

# What a host holds of ours for the firewall: the Firewall (firewall_model), [{"item", "reason"}]
# the model cannot express, whether anything of ours exists, and the implementation's own view.
FirewallState = namedtuple("FirewallState", ["firewall", "unsupported", "present", "raw"])
# What a host holds of our ALG rules (alg_model.AlgRule): helpers assigned to new sessions.
#   rules, unsupported, present as in RuleState; installed: our chain (and jump) or table in place
AlgRuleState = namedtuple("AlgRuleState", ["rules", "unsupported", "installed", "present", "raw"])
EMPTY_ALG_RULES = AlgRuleState([], [], False, False, None)

# Where programs are looked for when PATH is short (a managed host's sshd often gives /usr/bin only).
TOOL_PATHS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin")


class ProviderError(Exception):
    """The implementation cannot be used or refused a change; the message says what and why."""


class LocalHost(object):
    """get_bin_path/run_command over subprocess, for code that runs outside an AnsibleModule."""

    def __init__(self, environ=None):
        self.environ = dict(os.environ, LANG="C", LC_ALL="C")
        self.environ.update(environ or {})

    def get_bin_path(self, name, required=False, opt_dirs=None):
        search = os.pathsep.join([self.environ.get("PATH", "")] + list(opt_dirs or ()) + list(TOOL_PATHS))
        path = shutil.which(name, path=search)
        if path is None and required:
            raise ProviderError("the program %s is missing (looked in %s)" % (name, search))
        return path

    def run_command(self, argv, data=None, binary_data=False, check_rc=False):
        if data is not None and not binary_data and not data.endswith("\n"):
            data += "\n"
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, env=self.environ, check=False)
        if check_rc and proc.returncode != 0:
            raise ProviderError("%s failed: %s" % (" ".join(argv), proc.stderr.strip()))
        return proc.returncode, proc.stdout, proc.stderr


def program(host, name):
    """The path of a program the provider needs, or a ProviderError naming it."""
    path = host.get_bin_path(name, required=False, opt_dirs=list(TOOL_PATHS))
    if not path:
        raise ProviderError("the program %s is missing on this host" % name)
    return path


def has_program(host, name):
    return bool(host.get_bin_path(name, required=False, opt_dirs=list(TOOL_PATHS)))


class Provider(object):
    """Base class: the name, and the host it works on."""

    name = None

    def __init__(self, host):
        self.host = host

    @classmethod
    def detect(cls, host):
        """The provider's settings as found on the host ({} when it has none to find)."""
        return {}

    def settings(self):
        """The settings this provider works with (for results and facts)."""
        return {}

    def required_programs(self):
        """The programs this provider runs on the host."""
        return []

    def read_alg_rules(self):
        """Our ALG rules on the host (an implementation without them holds none)."""
        return EMPTY_ALG_RULES

    def write_alg_rules(self, rules, current, check=False):
        raise ProviderError("%s cannot assign connection-tracking helpers (ALGs)" % self.name)

    def remove_alg_rules(self, current, check=False):
        return None
