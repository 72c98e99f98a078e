"""The demo's link from its devices to the registry on the host's loopback.

``python -m atoll.demo.bridge PORT NETNS...`` listens on ``127.0.0.1:PORT`` inside
each network namespace NETNS (a path such as ``/run/netns/NAME-dev1``) and copies
every connection to ``127.0.0.1:PORT`` in its own namespace, where the registry
listens.  So the registry keeps one name, ``127.0.0.1:PORT``, for the host that
builds, pushes and signs and for the devices that pull: the image references and
the signatures' identities are the same on both sides.  Nothing listens on the
host's other addresses, and the LAN's own addresses stay in its namespaces.

A socket belongs to the namespace its thread was in when it was made:
``setns(2)`` moves this thread into NETNS for the listening socket and back.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import socket
import sys
import threading
from collections.abc import Sequence

#: setns(2)'s type for a network namespace.
CLONE_NEWNET = 0x40000000


def listen_in(netns: str, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:*port* inside the namespace at *netns*."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            server = socket.create_server(("127.0.0.1", port))
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    return server


def _pipe(client: socket.socket, port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    with client, upstream, selectors.DefaultSelector() as sel:
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        open_ends = 2
        while open_ends:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
                    continue
                sel.unregister(src)
                open_ends -= 1
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    return


def _accept(server: socket.socket, port: int) -> None:
    while True:
        try:
            client, _ = server.accept()
        except OSError:  # closed: the bridge ends
            return
        threading.Thread(target=_pipe, args=(client, port), daemon=True).start()


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m atoll.demo.bridge PORT NETNS...", file=sys.stderr)
        return 2
    port = int(argv[0])
    servers = [listen_in(netns, port) for netns in argv[1:]]
    threads = [threading.Thread(target=_accept, args=(s, port), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    print(f"127.0.0.1:{port} bridged into {', '.join(argv[1:])}", flush=True)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
