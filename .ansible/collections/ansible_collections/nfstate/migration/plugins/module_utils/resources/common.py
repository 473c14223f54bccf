# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the resource modules share: one error type, one result shape, one way to choose a provider.

Every module returns `before` and `after` (the resource as structured data), `commands` (a list of
lines: what was sent to the host, or in check mode what would be) and, in diff mode, `diff`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.nfstate.migration.plugins.module_utils.providers import provider_for
from ansible_collections.nfstate.migration.plugins.module_utils.providers.base import ProviderError

# The options every module that works through a provider takes (doc fragment nfstate.migration.provider).
PROVIDER_OPTIONS = dict(
    implementation=dict(type="str", default="auto", choices=["auto", "iptables", "nftables"]),
    iptables_backend=dict(type="str", default="auto", choices=["auto", "legacy", "nft"]),
)


class ResourceError(Exception):
    """A task that cannot be carried out; `extra` goes into the failed result."""

    def __init__(self, message, **extra):
        super(ResourceError, self).__init__(message)
        self.extra = extra


def provider_of(module, offline=False):
    """The provider the module's options name, detected on the host when 'auto'."""
    implementation = module.params.get("implementation")
    if offline and implementation in (None, "auto"):
        raise ResourceError("implementation must be given (iptables or nftables) when no host is read")
    try:
        return provider_for(module, implementation, module.params.get("iptables_backend"))
    except ProviderError as exc:
        raise ResourceError(str(exc))


def diff_text(what, before, after):
    """An Ansible diff of two JSON-able values."""
    return dict(before=json.dumps(before, indent=2, sort_keys=True) + "\n",
                after=json.dumps(after, indent=2, sort_keys=True) + "\n",
                before_header="%s before" % what, after_header="%s after" % what)


def run_module(module, run):
    """Run `run(module)`, answering with its result or failing with the ResourceError's message."""
    module.run_command_environ_update = dict(LANG="C", LC_ALL="C", LC_MESSAGES="C", LC_CTYPE="C")
    try:
        result = run(module)
    except ResourceError as exc:
        module.fail_json(msg=str(exc), **exc.extra)
    except ProviderError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)
