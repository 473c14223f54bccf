# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Python call inside a lab's network namespace, without a process: a thread enters the namespace
(setns) and makes the call, so that a test reads or writes a namespace's kernel tables (conntrack,
expectations) with the collection's own netlink code, and nothing touches the root namespace's."""

import ctypes
import threading

_LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns, fn, *args):
    """fn(*args) in a thread that entered network namespace ns (the thread ends with the call)."""
    result = {}

    def target():
        try:
            with open("/run/netns/" + ns) as handle:
                if _LIBC.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into %s" % ns)
            result["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
