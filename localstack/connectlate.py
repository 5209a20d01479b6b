"""An ssh ProxyCommand that connects late: the set-up of a connection on the internet.

The local stack's internet profile puts it in each user's ssh config, so
that every new ssh connection costs what its key exchange and round trips
cost there, while a further session on a connection already open (ssh's
multiplexing, ControlMaster) costs only the board's per-session delay:

    ProxyCommand python3 connectlate.py %h %p DELAY_MS
    ProxyUseFdpass yes

It waits DELAY_MS, connects, and hands the connected socket to ssh
(ProxyUseFdpass), so that no byte goes through it: the connection is as
fast as loopback once it is up.
"""

import socket
import sys
import time


def main(argv):
    host, port, delay_ms = argv[0], int(argv[1]), float(argv[2])
    time.sleep(delay_ms / 1000.0)
    connection = socket.create_connection((host, port))
    # ssh reads the descriptor from our stdout, a unix socket of its own.
    with socket.socket(fileno=sys.stdout.fileno()) as ssh:
        socket.send_fds(ssh, [b"\0"], [connection.fileno()])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
