"""Several hosts on one machine: a network namespace per server, on a virtual switch.

With ``DevCluster(hosts=True)`` every server of the dev cluster runs in a
network namespace of its own, with its own address, linked to a Linux
bridge in the root namespace by a veth pair.  Traffic between servers (and
between the client, in the root namespace, and the proxy) crosses real
interfaces, whose byte counters say what moved, and whose bandwidth ``tc``
can limit (a token bucket on both ends of each link).  Needs root and
iproute2 (``ip``, ``tc``).

Names: the bridge ``zcb<tag>``, host-side veths ``zcv<tag><n>``, namespaces
``zc<tag>-<server>``; addresses ``10.<a>.<b>.0/24`` with the bridge on ``.1``
and server ``n`` on ``.(10 + n)``.  ``<tag>`` and the subnet are random per
cluster, so that several clusters can run at once.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass

FIRST_HOST = 10


class NetworkError(RuntimeError):
    """The namespaces could not be made (not root, no iproute2 ...)."""


def available() -> str | None:
    """Why several-hosts mode cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "several hosts need root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"several hosts need iproute2's '{tool}'"
    return None


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass(frozen=True)
class HostNetwork:
    tag: str
    subnet: tuple[int, int]
    rate: str | None = None  # tc rate of every link, e.g. "1gbit"; None: unlimited

    @classmethod
    def new(cls, rate: str | None = None) -> HostNetwork:
        return cls(tag=os.urandom(2).hex(), subnet=(random.randint(64, 127),
                                                    random.randint(0, 255)), rate=rate)

    @classmethod
    def from_state(cls, state: dict) -> HostNetwork:
        return cls(state["tag"], tuple(state["subnet"]), state.get("rate"))

    def to_state(self) -> dict:
        return {"tag": self.tag, "subnet": list(self.subnet), "rate": self.rate}

    @property
    def bridge(self) -> str:
        return f"zcb{self.tag}"

    @property
    def gateway(self) -> str:
        """The bridge's address: the root namespace (the client, memcached)."""
        return self.address(-FIRST_HOST + 1)

    def address(self, number: int) -> str:
        a, b = self.subnet
        return f"10.{a}.{b}.{FIRST_HOST + number}"

    def namespace(self, name: str) -> str:
        return f"zc{self.tag}-{name}"

    def veth(self, number: int) -> str:
        return f"zcv{self.tag}{number}"

    def exists(self) -> bool:
        return os.path.exists(f"/sys/class/net/{self.bridge}")

    def up(self, names: list[str]) -> None:
        """The bridge, and a namespace with one linked interface per name (once)."""
        why = available()
        if why:
            raise NetworkError(why)
        if not self.exists():
            _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        present = set(_run("ip", "netns", "list").split())
        for number, name in enumerate(names):
            namespace = self.namespace(name)
            if namespace in present:
                continue
            host_end, inner = self.veth(number), f"zcn{self.tag}{number}"
            _run("ip", "netns", "add", namespace)
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", namespace)
            _run("ip", "-n", namespace, "link", "set", inner, "name", "eth0")
            _run("ip", "-n", namespace, "addr", "add", f"{self.address(number)}/24",
                 "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
            _run("ip", "link", "set", host_end, "master", self.bridge)
            _run("ip", "link", "set", host_end, "up")
            if self.rate:
                self.limit(host_end, None)
                self.limit("eth0", namespace)

    def limit(self, device: str, namespace: str | None) -> None:
        """A token bucket of ``rate`` on one end of a link (each direction is limited
        where it leaves)."""
        prefix = ["ip", "netns", "exec", namespace] if namespace else []
        _run(*prefix, "tc", "qdisc", "replace", "dev", device, "root", "tbf",
             "rate", self.rate or "", "burst", "1mb", "latency", "50ms")

    def down(self, names: list[str]) -> None:
        present = set(_run("ip", "netns", "list").split()) if shutil.which("ip") else set()
        for name in names:
            if self.namespace(name) in present:
                subprocess.run(["ip", "netns", "del", self.namespace(name)],
                               capture_output=True)
        if self.exists():
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(name)]

    def link_bytes(self, number: int) -> tuple[int, int]:
        """Bytes (into the server, out of it) that crossed server ``number``'s link."""
        base = f"/sys/class/net/{self.veth(number)}/statistics"
        with open(f"{base}/tx_bytes") as tx, open(f"{base}/rx_bytes") as rx:
            # The host end's transmit is the server's receive.
            return int(tx.read()), int(rx.read())
