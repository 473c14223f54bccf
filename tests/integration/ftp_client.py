# Copyright: nfstate.migration contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scripted FTP client of the ALG tests, as the code a lab namespace's Python runs (python3 -c
CLIENT_CODE SERVER TIMEOUT): it reads one JSON operation per line (login, pasv, fetch-pending, port
and retr...) and answers each with one JSON line, so that a test can pause a session mid-way."""

from alg_peers import ANSWER_EACH_LINE

CLIENT_CODE = r"""
import ftplib, hashlib, json, socket, sys
ftp = ftplib.FTP(timeout=float(sys.argv[2]))
pending = {}

def fetch(data_sock):
    data = bytearray()
    with data_sock:
        while True:
            chunk = data_sock.recv(65536)
            if not chunk:
                break
            data += chunk
    ftp.voidresp()
    return {"sha": hashlib.sha256(data).hexdigest(), "size": len(data)}

def run(op):
    if op["op"] == "login":
        ftp.connect(sys.argv[1], 21)
        return {"reply": ftp.login("user", "secret")}
    if op["op"] == "pasv":  # ask for a passive data port, do not connect yet
        ftp.voidcmd("TYPE I")
        pending["address"] = ftplib.parse227(ftp.sendcmd("PASV"))
        return {"port": pending["address"][1]}
    if op["op"] == "fetch-pending":  # connect to the port PASV gave, then RETR
        data_sock = socket.create_connection(pending.pop("address"), timeout=ftp.timeout)
        ftp.sendcmd("RETR data.bin")
        return fetch(data_sock)
    if op["op"] == "retr":  # a whole transfer, passive or active (PORT)
        ftp.set_pasv(op["passive"])
        ftp.voidcmd("TYPE I")
        data_sock = ftp.transfercmd("RETR data.bin")
        return fetch(data_sock)
    if op["op"] == "cmd":
        return {"reply": ftp.sendcmd(op["line"])}
    raise ValueError(op)

""" + ANSWER_EACH_LINE
