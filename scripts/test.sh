#!/usr/bin/env bash
# Runs every check, as root on Debian 12: sets up what is missing (scripts/setup.sh), then the YANG
# lint, ansible-test sanity, ansible-lint, the unit tests and the integration tests (network
# namespaces with real sshd, kernel NAT and ansible-playbook runs). Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NFSTATE_VENV:-$repo/.venv}
sanity_venv=${NFSTATE_SANITY_VENV:-$repo/.venv-sanity}

bash "$repo/scripts/setup.sh"
export PATH="$venv/bin:$PATH"
cd "$repo"

echo "== pyang --strict on yang/"
pyang --strict -p "$venv/share/yang/modules/ietf" yang/*.yang
echo "ok"

echo "== ansible-test sanity"
# ansible-test wants the collection under ansible_collections/<namespace>/<name>/: give it a copy of
# the files git knows about (tracked, or new and not ignored), as a clean checkout would have them.
sanity_root=$(mktemp -d)
trap 'rm -rf "$sanity_root"' EXIT
sanity_dir="$sanity_root/ansible_collections/nfstate/migration"
mkdir -p "$sanity_dir"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -C "$sanity_dir" -xf -
(cd "$sanity_dir" && PATH="$sanity_venv/bin:$PATH" ansible-test sanity --python 3.11 --color no)

if ls roles/*/tasks playbooks/*.yml >/dev/null 2>&1; then
  echo "== ansible-lint (production profile)"
  ansible-lint --profile production --offline playbooks roles extensions/molecule
fi

echo "== pytest: unit tests"
pytest -p no:cacheprovider -q -n 2 "$@" tests/unit

echo "== pytest: integration tests (two workers, one file each at a time: their labs stay apart)"
status=0
pytest -p no:cacheprovider -ra -n 2 --dist loadfile --durations=30 "$@" tests/integration || status=$?
[ "$status" -eq 5 ] && { echo "pytest collected no tests"; exit 1; }
exit "$status"
