"""Make this checkout importable as ansible_collections.nfstate.migration, as Ansible sees it."""

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collection_root():
    root = os.path.join(tempfile.gettempdir(), "nfstate-pytest-%d" % os.getuid())
    link = os.path.join(root, "ansible_collections", "nfstate", "migration")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.realpath(link) != REPO:
        tmp = link + ".%d" % os.getpid()
        os.symlink(REPO, tmp)
        os.replace(tmp, link)
    return root


sys.path.insert(0, _collection_root())
