"""Stand-in for ansible-test's pip bootstrap script, for machines that reach PyPI but not ci-files.

ansible-test runs this file inside each fresh sanity virtual environment with pip's own arguments
(e.g. `--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel`). We seed pip from the
wheel bundled with the interpreter (ensurepip) and let that pip install the requested version.
ensurepip runs in a child process: in-process it would leave PIP_CONFIG_FILE=/dev/null behind,
hiding the machine's pip configuration (certificates, mirrors) from the install that follows.
"""

import subprocess
import sys

GET_PIP_ONLY_FLAGS = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_FLAGS]
subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade"] + args)
