# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cutover agent as one file: a zip of the collection's module_utils that the host's Python runs.

The agent is code of module_utils (standard library only, like every module), so it needs no
installation on the host: the zip carries the packages under their collection names, with a
__main__ that starts plugins/module_utils/agent/main.py.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import io
import os
import zipfile

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "ansible_collections/nfstate/migration/plugins/module_utils"
MAIN = (b"import sys\n"
        b"from ansible_collections.nfstate.migration.plugins.module_utils.agent.main import main\n"
        b"sys.exit(main())\n")
# A fixed timestamp: the same code gives the same bytes, so an upload of an unchanged agent is skipped.
_STAMP = (2026, 1, 1, 0, 0, 0)


def _add(archive, name, data):
    info = zipfile.ZipInfo(name, date_time=_STAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def agent_zip(root=COLLECTION_ROOT):
    """The agent's zip, as bytes."""
    source = os.path.join(root, "plugins", "module_utils")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", MAIN)
        parts = PACKAGE.split("/")
        for depth in range(1, len(parts) + 1):
            _add(archive, "/".join(parts[:depth]) + "/__init__.py", b"")
        for directory, dirs, files in sorted(os.walk(source)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            relative = os.path.relpath(directory, source)
            package = PACKAGE if relative == "." else "%s/%s" % (PACKAGE, relative.replace(os.sep, "/"))
            if relative != "." and "__init__.py" not in files:
                _add(archive, package + "/__init__.py", b"")
            for name in sorted(files):
                if name.endswith(".py") and not (relative == "." and name == "__init__.py"):
                    with open(os.path.join(directory, name), "rb") as handle:
                        _add(archive, "%s/%s" % (package, name), handle.read())
    return buffer.getvalue()
