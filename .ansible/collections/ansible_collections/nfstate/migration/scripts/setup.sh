#!/usr/bin/env bash
# Sets up everything on a Debian 12 machine, as root: the system packages the lab and the managed
# hosts need, a Python virtual environment (.venv) with the controller requirements and the test
# tools, a second one for ansible-test sanity (its pinned tools clash with ansible-lint's), and the
# collection itself, built and installed where ansible-playbook finds it. Safe to run again.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NFSTATE_VENV:-$repo/.venv}
sanity_venv=${NFSTATE_SANITY_VENV:-$repo/.venv-sanity}

apt_packages=(
  conntrack nftables iptables ipset iproute2 python3-nftables   # the NAT implementations
  openssh-server openssh-client arping ndisc6 iputils-ping      # lab hosts, address moves
  python3 python3-venv tcpdump socat                            # interpreters, captures
  python3-pyftpdlib                                             # ALG tests: a real FTP server
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${NFSTATE_PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements.txt" -r "$repo/tests/requirements.txt"

if [ ! -x "$sanity_venv/bin/ansible-test" ]; then
  echo "== creating $sanity_venv"
  "$python" -m venv "$sanity_venv"
  core=$("$venv/bin/python" -c 'import ansible; print(ansible.__version__)')
  "$sanity_venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$core"
  reqs=$("$sanity_venv/bin/python" -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
  cat "$reqs"/sanity.{ansible-doc,changelog,import,pep8,pylint,runtime-metadata,validate-modules,yamllint}.txt \
    | grep -v '^#' | sort -u > "$sanity_venv/sanity-requirements.txt"
  "$sanity_venv/bin/pip" install -q --disable-pip-version-check -r "$sanity_venv/sanity-requirements.txt"
fi
# ansible-test bootstraps pip in its own virtual environments with a script it downloads from a host
# this machine may not reach; give it the offline stand-in.
mkdir -p "$HOME/.ansible/test/cache"
pip_version=$(grep -A3 "default_packages = dict(" "$sanity_venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py \
  | sed -n "s/.*pip='\([0-9.]*\)'.*/\1/p")
cp "$repo/tests/sanity/offline_get_pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

echo "== building and installing the collection"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$venv/bin/ansible-galaxy" collection build --force --output-path "$build" "$repo" >/dev/null
"$venv/bin/ansible-galaxy" collection install --force "$build"/nfstate-migration-*.tar.gz >/dev/null
echo "== ready: $venv, collection nfstate.migration installed"
