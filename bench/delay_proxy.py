#!/usr/bin/env python3
"""A UDP relay that holds every datagram for a while: a slow link on loopback.

    delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_MS

Datagrams to 127.0.0.1:LISTEN_PORT go to 127.0.0.1:UPSTREAM_PORT from a
socket of their sender's own, and the answers come back the same way,
each held DELAY_MS (so a round trip takes twice that). This VM's kernel
has no netem; bench/delayed.sh points a mount at its host through this
relay with an iptables DNAT rule. Loopback only.
"""

import heapq
import select
import socket
import sys
import time


def main() -> None:
    listen_port, upstream_port, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = delay_ms / 1000.0
    upstream = ("127.0.0.1", upstream_port)
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", listen_port))
    # One socket towards the upstream per sender, so its answers find
    # their way back.
    back_of: dict = {}
    sender_of: dict = {}
    due: list = []  # (when, sequence, socket, datagram, to)
    seq = 0
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
        ready, _, _ = select.select([front, *sender_of], [], [], timeout)
        now = time.monotonic()
        for s in ready:
            data, addr = s.recvfrom(65536)
            if s is front:
                back = back_of.get(addr)
                if back is None:
                    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    back.bind(("127.0.0.1", 0))
                    back_of[addr] = back
                    sender_of[back] = addr
                heapq.heappush(due, (now + delay, seq, back, data, upstream))
            else:
                heapq.heappush(due, (now + delay, seq, front, data, sender_of[s]))
            seq += 1
        while due and due[0][0] <= time.monotonic():
            _, _, s, data, to = heapq.heappop(due)
            s.sendto(data, to)


if __name__ == "__main__":
    main()
