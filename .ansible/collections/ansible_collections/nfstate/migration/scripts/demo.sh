#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the main job in a local lab: live connections
# through an iptables NAT migrated to an nftables NAT with ansible-playbook nfstate.migration.migrate_nat,
# and the report and the flows' health. Extra arguments go to lab/demo.py (--keep, --source-impl, ...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
exec "${NFSTATE_VENV:-$repo/.venv}/bin/python" "$repo/lab/demo.py" "$@"
