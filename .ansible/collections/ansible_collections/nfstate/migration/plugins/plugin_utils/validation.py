# -*- coding: utf-8 -*-
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side checks shared by the action plugins: a document is valid, or a failure saying why."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible_collections.nfstate.migration.plugins.module_utils import bounded_json
from ansible_collections.nfstate.migration.plugins.module_utils.nat_document import read_document_file

# How many errors a failure message spells out; all of them are in the result's `errors`.
ERRORS_IN_MESSAGE = 10

try:
    from ansible_collections.nfstate.migration.plugins.plugin_utils.yang_model import validate
    IMPORT_ERROR = None
except ImportError as error:  # yangson or pyang missing on the controller
    validate = None
    IMPORT_ERROR = error


def validation_errors(document):
    """Every error of the document as 'path: message' lines (empty when valid)."""
    if validate is None:
        raise RuntimeError(
            "validating state documents needs the collection's requirements on the controller "
            "(pip install -r requirements.txt: yangson, pyang): %s" % IMPORT_ERROR)
    return ["%s: %s" % (path, message) for path, message in validate(document)]


def validation_failure(document, what):
    """None when `document` is valid, else a failed task result naming every error."""
    # Task arguments arrive as Ansible's tagged containers (dict, list and str subclasses); the
    # validator checks JSON types exactly, so it is given plain JSON, read back within the same
    # bounds as a file.
    try:
        document = bounded_json.loads(json.dumps(document).encode("utf-8"), what=what)
    except (TypeError, ValueError, RecursionError) as error:
        return dict(failed=True, msg="%s is not a JSON document: %s" % (what, getattr(error, "problem", error)))
    try:
        errors = validation_errors(document)
    except RuntimeError as error:
        return dict(failed=True, msg=str(error))
    if not errors:
        return None
    shown = "; ".join(errors[:ERRORS_IN_MESSAGE])
    if len(errors) > ERRORS_IN_MESSAGE:
        shown += "; and %d more" % (len(errors) - ERRORS_IN_MESSAGE)
    return dict(failed=True, errors=errors,
                msg="%s is not a valid nfstate document (%d error(s)): %s" % (what, len(errors), shown))


def read_controller_document(path, max_sessions=None):
    """(document, bytes as JSON, bytes as gzip) of the state document at `path` on the controller.

    Read by the same bounded reader as on the hosts (module_utils/bounded_json.py): a document
    larger, deeper or longer than a table of max_sessions sessions can be is refused before it
    is parsed. Raises ValueError naming the file when it is missing, unreadable or refused.
    """
    if not os.path.isfile(path):
        raise ValueError("state document %s does not exist on the controller" % path)
    try:
        found = read_document_file(path, max_sessions, measure_compressed=True)
    except OSError as error:
        raise ValueError("cannot read state document %s: %s" % (path, error))
    except ValueError as error:
        raise ValueError("%s is not a usable state document: %s" % (path, getattr(error, "problem", error)))
    return found.document, found.bytes_raw, found.compressed
