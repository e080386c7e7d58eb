"""Free TCP ports on 127.0.0.1 for the servers the tests start."""

from __future__ import annotations

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now, below the kernel's ephemeral range as deploys choose
    theirs (``free_port_block``): a port from that range may be taken as a client connection's source port
    before the server started on it binds it (the suite's clients open thousands)."""
    from freestack.serving.processes import free_port_block

    ports: list[int] = []
    while len(ports) < n:
        if (p := free_port_block(HOST)) not in ports:
            ports.append(p)
    return ports
