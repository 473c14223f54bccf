#!/usr/bin/env python
# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo: a lab, live flows through its iptables NAT, the migration to its nftables NAT, the report.

    python lab/demo.py [--keep] [--source-impl iptables-legacy] [--target-impl nftables]

Builds the lab `demo` (network namespaces, an sshd per NAT host), starts TCP, UDP, ping and
port-forward flows over IPv4 and IPv6 through nat-a, runs
`ansible-playbook nfstate.migration.migrate_nat -e nfstate_source=nat-a -e nfstate_target=nat-b`
over SSH, lets the flows run on through nat-b, then shows each flow's health. Exits 1 unless the
migration succeeded and every flow is whole. The lab is torn down unless --keep is given.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flows import FlowSet, format_results  # noqa: E402  pylint: disable=wrong-import-position
from nfstate_lab import Lab  # noqa: E402  pylint: disable=wrong-import-position


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--source-impl", default="iptables-legacy")
    parser.add_argument("--target-impl", default="nftables")
    parser.add_argument("--snapshots", default=os.path.join(os.getcwd(), "nfstate-snapshots"))
    args = parser.parse_args()
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

    lab = Lab("demo", source_impl=args.source_impl, target_impl=args.target_impl,
              target_devices="lan1,wan1", use_checkout=False)
    try:
        print("== building the lab: client, server, nat-a (%s), nat-b (%s)" % (args.source_impl, args.target_impl))
        lab.up()
        with FlowSet(lab, duration=600) as flows:
            time.sleep(2.0)
            print("== live flows through nat-a:\n" + format_results(flows.results()))
            print("== migrating nat-a -> nat-b while they run")
            run = subprocess.run([playbook, "nfstate.migration.migrate_nat", "-e", "nfstate_source=nat-a",
                                  "-e", "nfstate_target=nat-b", "-e", "nfstate_snapshot_dir=%s" % args.snapshots],
                                 env=lab.env, check=False)
            time.sleep(3.0)
            results = flows.stop()
        print("== the flows after the migration (now through %s):" % lab.service_holder())
        print(format_results(results))
        whole = run.returncode == 0 and FlowSet.healthy(results)
        print("== %s" % ("every flow kept going: no byte lost, same translated address and port"
                         if whole else "FAILED: see above"))
        return 0 if whole else 1
    finally:
        if not args.keep:
            lab.down()


if __name__ == "__main__":
    sys.exit(main())
