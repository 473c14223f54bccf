# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The redirect gap from a packet capture on the client: how long established flows saw nothing.

The capture (tcpdump -w, Ethernet, on the client's only interface) holds what the client received
from either NAT host. The moment of the redirect is the first packet that arrived through the
target (its inside MAC address as the source). For each of the lab's flows (lab/flows.py: tcp,
udp, ping, port forward; IPv4 and IPv6), the gap is the longest time between two consecutive
packets the client received, within a window around that moment; the same figure over a quiet
stretch before the migration is the flow's own rhythm, for comparison.

    gaps = flow_gaps(read_pcap(path), client_mac, source_mac, target_mac, quiet=(t0, t1))
"""

import struct

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
# lab/flows.py's ports: the streams' and the echo's on the server, the port forward's on the client.
FLOW_PORTS = {5001: "tcp", 5002: "udp"}
FORWARD_PORT = 8080


def read_pcap(path):
    """[(seconds, frame bytes)] of a classic pcap file (micro- or nanosecond timestamps)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("%s is not a pcap file" % path)
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    record = struct.Struct(endian + "IIII")
    frames, offset = [], 24
    while offset + 16 <= len(data):
        sec, frac, caplen, _origlen = record.unpack_from(data, offset)
        offset += 16
        frames.append((sec + frac * scale, data[offset:offset + caplen]))
        offset += caplen
    return frames


def classify(frame):
    """(flow name, src mac, dst mac) of a frame of one of the lab's flows, else None."""
    if len(frame) < 14:
        return None
    dst, src = frame[0:6], frame[6:12]
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETH_IPV4 and len(frame) >= 34:
        family, ihl, proto = 4, (frame[14] & 0x0F) * 4, frame[23]
        l4 = 14 + ihl
    elif ethertype == ETH_IPV6 and len(frame) >= 54:
        family, proto, l4 = 6, frame[20], 54
    else:
        return None
    if proto in (ICMP, ICMPV6):
        if len(frame) > l4 and frame[l4] in (0, 129):  # echo reply
            return "ping%d" % family, src, dst
        return None
    if proto not in (TCP, UDP) or len(frame) < l4 + 4:
        return None
    sport, dport = struct.unpack_from("!HH", frame, l4)
    if dport == FORWARD_PORT or sport == FORWARD_PORT:
        return "fwd%d" % family, src, dst
    for port in (sport, dport):
        if port in FLOW_PORTS:
            return "%s%d" % (FLOW_PORTS[port], family), src, dst
    return None


def _longest_gap(times):
    best = (0.0, None)
    for before, later in zip(times, times[1:]):
        if later - before > best[0]:
            best = (later - before, before)
    return best


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


def flow_gaps(frames, client_mac, source_mac, target_mac, window=1.0, quiet=None):
    """{"switch_at", "flows": {name: {gap_ms, gap_at, quiet_gap_ms, packets, via_target}}}.

    Only frames to the client from one of the two NAT hosts count. switch_at: the first frame from
    the target. window: seconds each side of it. quiet: (start, end) of a stretch before the migration."""
    client, source, target = mac_bytes(client_mac), mac_bytes(source_mac), mac_bytes(target_mac)
    arrivals, switch_at = {}, None
    for at, frame in frames:
        found = classify(frame)
        if found is None:
            continue
        name, src, dst = found
        if dst != client or src not in (source, target):
            continue
        if src == target and switch_at is None:
            switch_at = at
        arrivals.setdefault(name, []).append((at, src == target))
    flows = {}
    for name, seen in sorted(arrivals.items()):
        times = [at for at, _target in seen]
        row = {"packets": len(times), "via_target": sum(1 for _at, target_seen in seen if target_seen)}
        if switch_at is not None:
            near = [at for at in times if switch_at - window <= at <= switch_at + window]
            gap, gap_at = _longest_gap(near)
            row.update(gap_ms=round(gap * 1000, 1), gap_at=gap_at)
        if quiet is not None:
            row["quiet_gap_ms"] = round(_longest_gap([at for at in times if quiet[0] <= at <= quiet[1]])[0] * 1000, 1)
        whole, whole_at = _longest_gap(times)
        row.update(whole_run_gap_ms=round(whole * 1000, 1), whole_run_gap_at=whole_at)
        flows[name] = row
    return {"switch_at": switch_at, "window_s": window, "flows": flows}
