"""Make this checkout importable as ansible_collections.nfstate.migration, as Ansible sees it."""

import os
import sys
import tempfile
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collection_root():
    # One root per checkout: test runs of two checkouts at once must not re-point each other's link.
    root = os.path.join(tempfile.gettempdir(), "nfstate-pytest-%d-%08x" % (os.getuid(), zlib.crc32(REPO.encode())))
    link = os.path.join(root, "ansible_collections", "nfstate", "migration")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.realpath(link) != REPO:
        tmp = link + ".%d" % os.getpid()
        os.symlink(REPO, tmp)
        os.replace(tmp, link)
    return root


sys.path.insert(0, _collection_root())
