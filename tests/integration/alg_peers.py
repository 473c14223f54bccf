# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scripted TFTP and SIP peers of the ALG tests, and the pipe both ALG test files speak to them.

UDP_PEER_CODE is what a lab namespace's Python runs (python3 -c UDP_PEER_CODE ROLE ADDRESS TIMEOUT,
ROLE "client" or "server"): it reads one JSON operation per line and answers each with one JSON
line, so that a test can stop a TFTP transfer or a SIP call between two packets and move the NAT
meanwhile.

- TFTP (RFC 1350): the client sends a read request from a port of its own (tftp-rrq) and later
  takes the blocks and acknowledges them (tftp-receive); the server takes the request
  (tftp-wait-rrq) and, when told (tftp-send), answers from a new port, as TFTP servers do: the
  answer can pass a NAT only through the expectation the TFTP helper made for it.
- SIP: the client sends an INVITE with SDP from a signalling port (sip-invite), its media sockets
  on the RTP port and the next (RTCP); the server reads it (sip-wait-invite) and sends media to the
  address and port the SDP offered (rtp-send); the client reads one datagram (rtp-receive). The SIP
  helper's expectations are the only way in for that media.

Each peer's sockets time out after TIMEOUT seconds: a step that fails answers {"error": "...timed
out"} instead of hanging.
"""

import json
import select

# The end of every scripted peer: one JSON answer per JSON operation read, run by its run().
ANSWER_EACH_LINE = r"""
for line in sys.stdin:
    try:
        answer = run(json.loads(line))
    except Exception as exc:
        answer = {"error": "%s: %s" % (type(exc).__name__, exc)}
    print(json.dumps(answer), flush=True)
"""

UDP_PEER_CODE = r"""
import hashlib, json, socket, struct, sys
role, address, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
state = {}

def udp(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(timeout)
    return sock

INVITE_SDP = ("v=0\r\no=alice 2890844526 2890844526 IN IP4 {me}\r\ns=-\r\nc=IN IP4 {me}\r\nt=0 0\r\n"
              "m=audio {rtp} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
INVITE = ("INVITE sip:bob@{peer} SIP/2.0\r\nVia: SIP/2.0/UDP {me}:{sport};branch=z9hG4bK776a{sport}\r\n"
          "Max-Forwards: 70\r\nTo: <sip:bob@{peer}>\r\nFrom: <sip:alice@{me}>;tag=1928301774\r\n"
          "Call-ID: a84b4c76e66710-{sport}@{me}\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@{me}:{sport}>\r\n"
          "Content-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n{sdp}")

def run(op):
    name = op["op"]
    # the client
    if name == "tftp-rrq":  # a read request; the answer will come from another port
        sock = state["tftp"] = udp(0)
        sock.sendto(b"\0\x01data.bin\0octet\0", (op["server"], 69))
        return {"port": sock.getsockname()[1]}
    if name == "tftp-receive":
        sock, data, block = state["tftp"], bytearray(), 1
        while True:
            packet, sender = sock.recvfrom(1024)
            opcode, number = struct.unpack("!HH", packet[:4])
            if opcode != 3 or number != block:
                continue
            data += packet[4:]
            sock.sendto(struct.pack("!HH", 4, number), sender)
            if len(packet) - 4 < 512:
                return {"sha": hashlib.sha256(data).hexdigest(), "size": len(data), "from": list(sender)}
            block += 1
    if name == "sip-invite":  # signalling from op["sport"], media expected on op["rtp"] and the next port
        rtp, sport = op["rtp"], op.get("sport", 5060)
        state["media"] = {rtp: udp(rtp), rtp + 1: udp(rtp + 1)}
        sdp = INVITE_SDP.format(me=address, rtp=rtp)
        with udp(sport) as signalling:
            signalling.sendto(INVITE.format(me=address, sport=sport, peer=op["server"], length=len(sdp),
                                            sdp=sdp).encode(), (op["server"], 5060))
        return {}
    if name == "rtp-receive":  # one datagram on a media port (the RTP one unless op["port"])
        media = state["media"]
        packet, sender = media[op.get("port", min(media))].recvfrom(2048)
        return {"data": packet.decode(), "from": list(sender)}
    # the server
    if name == "tftp-wait-rrq":
        sock = state["listen-69"]
        packet, state["client"] = sock.recvfrom(1024)
        return {"request": packet[2:].split(b"\0")[0].decode(), "client": list(state["client"])}
    if name == "tftp-send":  # from a port of its own, as TFTP servers do
        with open(op["file"], "rb") as handle:
            payload = handle.read()
        blocks = [payload[i:i + 512] for i in range(0, len(payload) + 1, 512)]
        with udp(0) as sock:
            for number, block in enumerate(blocks, 1):
                sock.sendto(struct.pack("!HH", 3, number) + block, state["client"])
                answer, _ = sock.recvfrom(1024)
                if struct.unpack("!HH", answer[:4]) != (4, number):
                    return {"error": "bad ack %r" % answer}
            return {"blocks": len(blocks), "port": sock.getsockname()[1]}
    if name == "sip-wait-invite":
        sock = state["listen-5060"]
        packet, sender = sock.recvfrom(4096)
        lines = packet.decode().split("\r\n")
        return {"from": list(sender), "c": [l for l in lines if l.startswith("c=")],
                "m": [l for l in lines if l.startswith("m=")], "via": [l for l in lines if l.startswith("Via:")]}
    if name == "rtp-send":
        with udp(op["sport"]) as sock:
            sock.sendto(op["data"].encode(), (op["to"], op["port"]))
        return {}
    raise ValueError(op)

if role == "server":  # listening before any request is sent
    state["listen-69"], state["listen-5060"] = udp(69), udp(5060)
print(json.dumps({"ready": role}), flush=True)
""" + ANSWER_EACH_LINE


def read_line(proc, timeout, log=None):
    """One line of proc's output within timeout seconds; a peer that ended says why (its log)."""
    if not select.select([proc.stdout], [], [], timeout)[0]:
        raise AssertionError("no answer within %s s" % timeout)
    line = proc.stdout.readline()
    if not line:
        ended = "process ended"
        if log is not None:
            with open(log) as handle:
                ended += ": " + handle.read()
        raise AssertionError(ended)
    return line


class Peer(object):
    """A peer process that takes one JSON operation per line on stdin and answers with one line.

    timeout: how long an answer may take; the peers' own socket timeouts end a failing step first,
    this only guards against a hang.
    """

    def __init__(self, proc, timeout, log=None):
        self.proc = proc
        self.timeout = timeout
        self.log = log

    def __call__(self, op, **args):
        self.send(op, **args)
        return self.answer()

    def send(self, op, **args):
        """Start a step without waiting for its end."""
        args["op"] = op
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()

    def answer(self):
        return json.loads(read_line(self.proc, self.timeout, self.log))
