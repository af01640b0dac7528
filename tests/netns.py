"""A small multi-host network built from Linux network namespaces, for tests.

One server namespace and one or more site namespaces, each site joined to the
server by its own veth pair on a /30 of ``10.231.X.0/24``::

    site 0: uplink 10.231.X.2/30  <->  to-site-0 10.231.X.1/30  (server)
    site 1: uplink 10.231.X.6/30  <->  to-site-1 10.231.X.5/30  (server)
    ...

The server is reached at ``10.231.X.1`` from every site (sites other than the
first route that one address through their own link), so a server certificate
naming that single IP serves them all. Cutting one site's link (its server-side
veth down) partitions that site and no other. Creating namespaces needs
CAP_NET_ADMIN and CAP_SYS_ADMIN (``ip netns add`` mounts under /run/netns) and
``ip`` from iproute2.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedwarden.core.errors import FedwardenError

logger = logging.getLogger(__name__)

_names = itertools.count()


class NetworkUnavailable(FedwardenError):
    """This machine cannot create network namespaces (no privilege, or no iproute2)."""


@dataclass(frozen=True)
class Site:
    """One site namespace and the server-side end of its link."""

    namespace: str
    server_device: str


@dataclass(frozen=True)
class Network:
    """A server namespace, its address, and the site namespaces linked to it."""

    server_namespace: str
    server_address: str
    sites: tuple[Site, ...]

    def cut(self, site: Site) -> None:
        """Partition ``site`` from the server: its link goes down, in-flight packets are lost."""
        ip(self.server_namespace, "link", "set", site.server_device, "down")

    def restore(self, site: Site) -> None:
        """Bring ``site``'s link back up (the kernel restores the connected route)."""
        ip(self.server_namespace, "link", "set", site.server_device, "up")


def inside(namespace: str, command: Sequence[str]) -> list[str]:
    """``command`` run inside ``namespace`` (``ip netns exec`` execs it, keeping its pid)."""
    return ["ip", "netns", "exec", namespace, *command]


def ip(namespace: str | None, *arguments: str) -> None:
    """Run ``ip [-n namespace] ARGUMENTS``; raise naming the command and its stderr if it fails."""
    command = ["ip", *(["-n", namespace] if namespace else []), *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NetworkUnavailable("`ip` (iproute2) is not installed") from None
    if done.returncode != 0:
        raise NetworkUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def unique_name(role: str) -> str:
    """A namespace name no other test process uses: ``fw-<pid>-<n>-<role>``."""
    return f"fw-{os.getpid()}-{next(_names)}-{role}"


def probe() -> None:
    """Create and delete one namespace; raise :class:`NetworkUnavailable` saying why it failed."""
    name = unique_name("probe")
    ip(None, "netns", "add", name)
    ip(None, "netns", "delete", name)


@contextmanager
def network(sites: int) -> Iterator[Network]:
    """Build a server namespace linked to ``sites`` site namespaces; delete them all afterwards."""
    octet = os.getpid() % 250 + 1
    server_namespace = unique_name("srv")
    site_namespaces = [unique_name(f"site{index}") for index in range(sites)]
    created: list[str] = []
    try:
        for namespace in [server_namespace, *site_namespaces]:
            ip(None, "netns", "add", namespace)
            created.append(namespace)
            ip(namespace, "link", "set", "lo", "up")
        server_address = f"10.231.{octet}.1"
        linked = []
        for index, namespace in enumerate(site_namespaces):
            server_side = f"10.231.{octet}.{4 * index + 1}"
            site_side = f"10.231.{octet}.{4 * index + 2}"
            device = f"to-site-{index}"
            veth = f"link add {device} type veth peer name uplink netns {namespace}"
            ip(server_namespace, *veth.split())
            ip(server_namespace, "address", "add", f"{server_side}/30", "dev", device)
            ip(namespace, "address", "add", f"{site_side}/30", "dev", "uplink")
            ip(server_namespace, "link", "set", device, "up")
            ip(namespace, "link", "set", "uplink", "up")
            if server_side != server_address:
                ip(namespace, "route", "add", f"{server_address}/32", "via", server_side)
            linked.append(Site(namespace, device))
        yield Network(server_namespace, server_address, tuple(linked))
    finally:
        for namespace in reversed(created):
            try:
                ip(None, "netns", "delete", namespace)
            except NetworkUnavailable as error:
                logger.warning("could not delete network namespace %s: %s", namespace, error)


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP socket listening on ``port`` (seen in its namespace).

    Both tables are read: gRPC binds an IPv4 address as a v4-mapped IPv6 socket.
    """
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False
