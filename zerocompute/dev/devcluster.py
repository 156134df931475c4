"""A real Swift cluster on loopback, for development, the demo and the tests.

``zerocompute devcluster start`` builds (once) and starts, in one directory:
a proxy (tempauth with SAIO's users, the zerocompute filter and a normal
pipeline), an account and a container server, four object servers each with
its own device and the zerocompute_object filter, and rings built with
Swift's RingBuilder (object ring: three replicas over the four servers).
Every server is a real Swift WSGI server in its own process; they keep
running after the command returns.  As on a SAIO, object data lives on a
filesystem that holds Swift's metadata whole: a tmpfs mounted on ``srv/``
when running as root (ext4 would refuse metadata beyond about 3.6 KB), and
there are two replicated storage policies, ``gold`` (default, 3 replicas)
and ``silver`` (2).  ``stop``, ``status`` and ``env`` do what
they say.  The same is available from Python as :class:`DevCluster`.

Swift reads ``swift.conf`` from ``/etc/swift`` at import time, so each server
is started through :func:`serve`, which points Swift at the cluster's own
directory before it loads anything.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from zerocompute import guests
from zerocompute.dev.hosts import HostNetwork
from zerocompute.sandbox import shuffle_core
from zerocompute.sandbox.procfs import pid_alive

DEFAULT_DIR = os.environ.get("ZEROCOMPUTE_DEVCLUSTER_DIR") or os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"zerocompute-devcluster-{os.getuid()}")
# The machine's compiled modules, shared by every dev cluster (share_compiled_modules),
# beside its guest builds.
COMPILED_DIR = os.path.join(os.path.dirname(guests.CACHE_DIR), "compiled")
OBJECT_SERVERS = 4
# Filesystems that hold Swift's metadata xattrs whole, as a SAIO's XFS does.
XATTR_FRIENDLY = ("tmpfs", "xfs")
REPLICAS = 3
PART_POWER = 10
HOST = "127.0.0.1"
# Storage policies as a SAIO's: (index, name, replicas, erasure coding); index 0 is
# the default.  The EC policy's fragments (4 data + 2 parity) need more devices than
# there are object servers: each has a second device in its ring.
EC_POLICY = {"policy_type": "erasure_coding", "ec_type": "liberasurecode_rs_vand",
             "ec_num_data_fragments": 4, "ec_num_parity_fragments": 2,
             "ec_object_segment_size": 1048576}
POLICIES = [(0, "gold", 3, None), (1, "silver", 2, None), (2, "ec42", 6, EC_POLICY)]

# Tempauth users exactly as in a SAIO's proxy-server.conf:
# (account, user, key, groups).
USERS = [
    ("admin", "admin", "admin", ".admin .reseller_admin"),
    ("test", "tester", "testing", ".admin"),
    ("test", "tester2", "testing2", ".admin"),
    ("test", "tester3", "testing3", ""),
    ("test2", "tester2", "testing2", ".admin"),
]

PROXY_PIPELINE = ("catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk "
                  "tempurl tempauth zerocompute staticweb copy container-quotas "
                  "account-quotas slo dlo versioned_writes symlink proxy-logging proxy-server")


@dataclass(frozen=True)
class Server:
    name: str
    kind: str  # proxy, account, container, object
    port: int

    @property
    def section(self) -> str:
        return f"{self.kind}-server"


def share_compiled_modules(cache_dir: str) -> None:
    """Point a dev cluster's cache of compiled modules at the machine's: every dev
    cluster (the demo, each test module's, each benchmark's) then compiles the 26 MB
    Python runtime and each guest once per machine, not once per cluster.  Entries
    are named by the module's digest and the wasmtime version, written atomically
    under a lock, and recompiled if they do not load; removing a cluster's
    directory removes only its link."""
    link = os.path.join(cache_dir, "compiled")
    if os.path.lexists(link):
        return
    os.makedirs(COMPILED_DIR, exist_ok=True)
    os.makedirs(cache_dir, exist_ok=True)
    os.symlink(COMPILED_DIR, link)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are chosen,
    or the kernel may hand the same port out twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class DevCluster:
    """The dev cluster in ``directory`` (created on first start)."""

    def __init__(self, directory: str = DEFAULT_DIR, object_servers: int = OBJECT_SERVERS,
                 task_slots: int = 2, slots: dict[str, int] | None = None,
                 proxy_options: dict[str, str] | None = None, proxies: int = 1,
                 object_options: dict[str, str] | None = None,
                 hosts: bool = False, link_rate: str | None = None,
                 encryption: bool = False):
        """``slots`` overrides ``task_slots`` per object server (``{"object1": 1}``);
        ``proxy_options`` are added to the proxies' ``[filter:zerocompute]``, and
        ``object_options`` to the object servers' ``[filter:zerocompute_object]``;
        ``proxies`` > 1 runs more proxy processes (``proxy2``, ...), as behind a load
        balancer: same rings, same secret, same tempauth keys.  ``hosts`` puts every
        server in a network namespace of its own (:mod:`zerocompute.dev.hosts`), with
        ``link_rate`` (``"1gbit"``) on every link.  ``encryption`` adds Swift's keymaster
        and encryption middleware to the proxies: every object is encrypted at rest."""
        self.directory = os.path.abspath(directory)
        self.etc = os.path.join(self.directory, "etc")
        self.logs = os.path.join(self.directory, "log")
        self.state_file = os.path.join(self.directory, "cluster.json")
        self.object_server_count = object_servers
        self.task_slots = task_slots
        self.slots = slots or {}
        self.proxy_options = proxy_options or {}
        self.object_options = object_options or {}
        self.proxy_count = proxies
        self.hosts, self.link_rate = hosts, link_rate
        self.encryption = encryption
        self.data_note: str | None = None  # why object data is not on a tmpfs, if it is not
        self.state: dict[str, Any] = {}
        if os.path.exists(self.state_file):
            with open(self.state_file) as f:
                self.state = json.load(f)

    # -- facts --------------------------------------------------------------
    @property
    def servers(self) -> list[Server]:
        return [Server(name, *kind_port) for name, kind_port in self.state["servers"].items()]

    @property
    def object_servers(self) -> list[Server]:
        return [s for s in self.servers if s.kind == "object"]

    @property
    def network(self) -> HostNetwork | None:
        """The several-hosts network, when the cluster was built with ``hosts``."""
        state = self.state.get("network")
        return HostNetwork.from_state(state) if state else None

    def address(self, server: Server) -> str:
        """Where ``server`` listens: 127.0.0.1, or its own namespace's address."""
        network = self.network
        if network is None:
            return HOST
        if server.kind == "memcached":
            return network.gateway
        return network.address(list(self.state["servers"]).index(server.name))

    @property
    def proxy_url(self) -> str:
        return self.url_of("proxy")

    def url_of(self, proxy: str) -> str:
        return f"http://{self.address(self.server(proxy))}:{self.state['servers'][proxy][1]}"

    @property
    def auth_url(self) -> str:
        return f"{self.proxy_url}/auth/v1.0"

    def storage_url(self, account: str = "test", proxy: str = "proxy") -> str:
        return f"{self.url_of(proxy)}/v1/AUTH_{account}"

    @property
    def secret(self) -> str:
        return self.state["secret"]

    def credentials(self, user: str = "test:tester",
                    proxy: str = "proxy") -> tuple[str, str, str]:
        """``(auth_url, user, key)`` for one of the tempauth users, through ``proxy``."""
        for account, name, key, _groups in USERS:
            if f"{account}:{name}" == user:
                return f"{self.url_of(proxy)}/auth/v1.0", user, key
        raise KeyError(user)

    def connection(self, user: str = "test:tester", proxy: str = "proxy", **kwargs: Any):
        """A python-swiftclient Connection as ``user``, through ``proxy``."""
        from swiftclient.client import Connection
        auth_url, name, key = self.credentials(user, proxy)
        kwargs.setdefault("retries", 0)
        return Connection(auth_url, name, key, **kwargs)

    def env_lines(self, user: str = "test:tester") -> str:
        auth_url, name, key = self.credentials(user)
        return f"export ST_AUTH={auth_url}\nexport ST_USER={name}\nexport ST_KEY={key}\n"

    def object_ring(self, policy_index: int = 0):
        """The cluster's object ring, with Swift pointed at this cluster's swift.conf."""
        from swift.common.ring import Ring
        from swift.common.utils import set_swift_dir
        set_swift_dir(self.etc)
        name = "object" if policy_index == 0 else f"object-{policy_index}"
        return Ring(self.etc, ring_name=name)

    def device_path(self, server: Server) -> str:
        return os.path.join(self.data_dir, server.name)

    @property
    def data_dir(self) -> str:
        return os.path.join(self.directory, "srv")

    def data_filesystem(self) -> str:
        """The type of the filesystem object data is on (``tmpfs``, ``ext4`` ...)."""
        path = os.path.realpath(self.data_dir)
        best, kind = "", "unknown"
        with open("/proc/mounts") as f:
            for line in f:
                _dev, point, fstype = line.split()[:3]
                point = point.replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) \
                        and len(point) > len(best):
                    best, kind = point, fstype
        return kind

    def mount_data(self) -> str | None:
        """Put object data on a tmpfs (as root); else say why metadata is limited."""
        os.makedirs(self.data_dir, exist_ok=True)
        if os.path.ismount(self.data_dir) or self.data_filesystem() in XATTR_FRIENDLY:
            return None
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755",
                                   "zerocompute-devcluster", self.data_dir],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                return None
            why = done.stderr.strip() or "mount failed"
        else:
            why = "not running as root, so no tmpfs could be mounted"
        return (f"object data is on {self.data_filesystem()} ({why}): objects whose "
                "metadata exceeds about 3.6 KB will fail with 503, as they would not on a "
                "SAIO's XFS")

    def unmount_data(self) -> None:
        if os.path.ismount(self.data_dir):
            subprocess.run(["umount", "-l", self.data_dir], capture_output=True)

    def log_path(self, server: Server) -> str:
        return os.path.join(self.logs, f"{server.name}.log")

    # -- building -------------------------------------------------------------
    def build(self) -> None:
        """Write configs and rings; reuses ports and secrets of an earlier build."""
        os.makedirs(self.etc, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        self.data_note = self.mount_data()
        if not self.state:
            names = [("proxy", "proxy"), ("account", "account"), ("container", "container")]
            names += [(f"object{n}", "object") for n in range(1, self.object_server_count + 1)]
            if shutil.which("memcached"):  # optional, as the SAIO's cache
                names.append(("memcached", "memcached"))
            servers = {name: (kind, port) for (name, kind), port in
                       zip(names, _free_ports(len(names)), strict=True)}
            self.state = {
                "servers": servers,
                "pids": {},
                "secret": secrets.token_hex(16),
                "hash_prefix": secrets.token_hex(8),
                "hash_suffix": secrets.token_hex(8),
                "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode("ascii"),
                "network": HostNetwork.new(self.link_rate).to_state() if self.hosts else None,
                "encryption_root_secret": base64.b64encode(os.urandom(32)).decode("ascii")
                if self.encryption else None,
            }
        for number in range(2, self.proxy_count + 1):
            if f"proxy{number}" not in self.state["servers"]:
                self.state["servers"][f"proxy{number}"] = ("proxy", _free_ports(1)[0])
        self._write_swift_conf()
        for server in self.servers:
            if server.kind == "memcached":
                continue
            for device in self._devices(server):
                os.makedirs(os.path.join(self.device_path(server), device), exist_ok=True)
            with open(self._conf_path(server), "w") as f:
                f.write(self._server_conf(server))
        self._build_rings()
        self._save_state()

    def _save_state(self) -> None:
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.state_file)

    def _conf_path(self, server: Server) -> str:
        return os.path.join(self.etc, f"{server.name}.conf")

    @staticmethod
    def _device(server: Server) -> str:
        return {"account": "sda", "container": "sdc"}.get(server.kind, f"sd{server.name[6:]}")

    def _devices(self, server: Server) -> list[str]:
        """Every device of a server: an object server's second one is the EC ring's."""
        if server.kind != "object":
            return [self._device(server)]
        return [self._device(server), f"sd{int(server.name[6:]) + self.object_server_count}"]

    def _write_swift_conf(self) -> None:
        policies = "".join(
            f"\n[storage-policy:{index}]\nname = {name}\n"
            + ("default = yes\n" if index == 0 else "")
            + "".join(f"{k} = {v}\n" for k, v in (ec or {}).items())
            for index, name, _replicas, ec in POLICIES)
        with open(os.path.join(self.etc, "swift.conf"), "w") as f:
            f.write(f"""[swift-hash]
swift_hash_path_prefix = {self.state['hash_prefix']}
swift_hash_path_suffix = {self.state['hash_suffix']}
{policies}""")

    def _build_rings(self) -> None:
        from swift.common.ring import RingBuilder
        groups = {"account": ([s for s in self.servers if s.kind == "account"], REPLICAS),
                  "container": ([s for s in self.servers if s.kind == "container"], REPLICAS)}
        ec_rings = set()
        for index, _name, replicas, ec in POLICIES:
            ring_name = "object" if index == 0 else f"object-{index}"
            groups[ring_name] = (self.object_servers, replicas)
            if ec:
                ec_rings.add(ring_name)
        for ring_name, (members, replicas) in groups.items():
            ring_file = os.path.join(self.etc, f"{ring_name}.ring.gz")
            if os.path.exists(ring_file):
                continue
            devices = [(server, device) for server in members
                       for device in (self._devices(server) if ring_name in ec_rings
                                      else [self._device(server)])]
            builder = RingBuilder(PART_POWER, min(replicas, len(devices)), 1)
            for i, (server, device) in enumerate(devices):
                builder.add_dev({"id": i, "region": 1,
                                 "zone": members.index(server) + 1,
                                 "ip": self.address(server),
                                 "port": server.port, "device": device,
                                 "weight": 100.0, "meta": server.name})
            builder.rebalance()
            builder.save(os.path.join(self.etc, f"{ring_name}.builder"))
            builder.get_ring().save(ring_file)

    def _server_conf(self, server: Server) -> str:
        common = f"""[DEFAULT]
bind_ip = {self.address(server)}
bind_port = {server.port}
workers = 0
user = {getpass.getuser()}
swift_dir = {self.etc}
devices = {self.device_path(server)}
mount_check = false
# As a SAIO: Swift's functional tests ask for objects of the maximum size,
# which must not reserve that much space on a small data filesystem.
disable_fallocate = true
log_name = {server.name}
log_level = INFO

[filter:healthcheck]
use = egg:swift#healthcheck
"""
        if server.kind == "proxy":
            return common + self._proxy_conf()
        if server.kind == "object":
            return common + f"""
[pipeline:main]
pipeline = healthcheck zerocompute_object object-server

[app:object-server]
use = egg:swift#object

[filter:zerocompute_object]
use = egg:zerocompute#zerocompute_object
secret = {self.secret}
slots = {self.slots.get(server.name, self.task_slots)}
cache_dir = {os.path.join(self.directory, 'cache')}
""" + "".join(f"{k} = {v}\n" for k, v in self.object_options.items())
        return common + f"""
[pipeline:main]
pipeline = healthcheck {server.kind}-server

[app:{server.kind}-server]
use = egg:swift#{server.kind}
"""

    def _proxy_conf(self) -> str:
        users = "\n".join(
            f"user_{account}_{name} = {key} {groups}".rstrip()
            for account, name, key, groups in USERS)
        simple = ["catch_errors", "gatekeeper", "listing_formats", "bulk", "tempurl",
                  "staticweb", "copy", "slo", "dlo", "symlink"]
        filters = "\n".join(f"[filter:{name}]\nuse = egg:swift#{name}\n" for name in simple)
        options = "\n".join(f"{k} = {v}" for k, v in self.proxy_options.items())
        pipeline, cache = PROXY_PIPELINE, ""
        memcached = self.state["servers"].get("memcached")
        if memcached:
            pipeline = pipeline.replace("proxy-logging listing_formats",
                                        "proxy-logging cache listing_formats", 1)
            cache = (f"[filter:cache]\nuse = egg:swift#memcache\n"
                     f"memcache_servers = {self.address(self.server('memcached'))}:"
                     f"{memcached[1]}\n")
        secret = self.state.get("encryption_root_secret")
        if secret:  # as Swift's docs place them: just before the final proxy-logging
            pipeline = pipeline.replace("symlink proxy-logging proxy-server",
                                        "symlink keymaster encryption proxy-logging proxy-server")
            cache += (f"[filter:keymaster]\nuse = egg:swift#keymaster\n"
                      f"encryption_root_secret = {secret}\n\n"
                      f"[filter:encryption]\nuse = egg:swift#encryption\n")
        return f"""
[pipeline:main]
pipeline = {pipeline}

{cache}
[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
fernet_key_1 = {self.state['fernet_key']}
active_fernet_key_id = 1
{users}

[filter:zerocompute]
use = egg:zerocompute#zerocompute
secret = {self.secret}
{options}

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true

[filter:container-quotas]
use = egg:swift#container_quotas

[filter:account-quotas]
use = egg:swift#account_quotas

{filters}"""

    # -- running --------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> DevCluster:
        """Start every server that is not running; return once all answer."""
        self.build()
        # The object servers' shuffle core, built before they start, not by the first
        # MapReduce job's maps (on a fresh machine zig builds its WASI libc first).
        shuffle_core.install(os.path.join(self.directory, "cache"))
        share_compiled_modules(os.path.join(self.directory, "cache"))
        if self.network is not None:
            self.network.up([s.name for s in self.servers])
        for server in self.servers:
            if not self.is_running(server):
                self.start_server(server)
        self.wait_until_ready(timeout)
        return self

    def start_server(self, server: Server) -> None:
        log = open(self.log_path(server), "ab")
        command = [sys.executable, "-m", "zerocompute.dev.devcluster", "serve",
                   self._conf_path(server), server.section]
        network = self.network
        if network is not None and server.kind != "memcached":
            command = network.exec_prefix(server.name) + command
        if server.kind == "memcached":
            command = [shutil.which("memcached") or "memcached", "-l", self.address(server),
                       "-p", str(server.port), "-U", "0", "-m", "64", "-u", getpass.getuser()]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
        log.close()
        self.state["pids"][server.name] = process.pid
        self._save_state()

    def server(self, name: str) -> Server:
        return next(s for s in self.servers if s.name == name)

    def restart(self, server: Server, timeout: float = 60.0) -> None:
        """Start a server again (after :meth:`kill`) and wait until it answers."""
        if not self.is_running(server):
            self.start_server(server)
        self.wait_until_ready(timeout)

    def is_running(self, server: Server) -> bool:
        pid = self.state.get("pids", {}).get(server.name)
        return bool(pid) and pid_alive(pid)

    def answers(self, server: Server) -> bool:
        if server.kind == "memcached":
            try:
                with socket.create_connection((self.address(server), server.port),
                                              timeout=2) as s:
                    s.sendall(b"version\r\n")
                    return s.recv(64).startswith(b"VERSION")
            except OSError:
                return False
        try:
            with urllib.request.urlopen(f"http://{self.address(server)}:{server.port}"
                                        "/healthcheck",
                                        timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.servers)
        while pending:
            for server in list(pending):
                if not self.is_running(server):
                    raise RuntimeError(f"{server.name} exited while starting; its log says:\n"
                                       + self.log_tail(server))
                if self.answers(server):
                    pending.remove(server)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(f"{names} did not answer within {timeout:g} s")
            if pending:
                time.sleep(0.1)

    def log_tail(self, server: Server, lines: int = 30) -> str:
        try:
            with open(self.log_path(server), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def kill(self, server: Server, sig: int = signal.SIGKILL) -> None:
        """Signal one server (SIGKILL by default: the way hardware dies)."""
        pid = self.state.get("pids", {}).get(server.name)
        if pid and pid_alive(pid):
            os.killpg(pid, sig)
            self._reap(pid)

    @staticmethod
    def _reap(pid: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return True
            except ChildProcessError:
                pass  # not our child: poll until it is gone
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    def stop(self, wipe: bool = False) -> None:
        """Stop every server; ``wipe`` also drops the object data (unmounts the tmpfs)."""
        for server in self.servers if self.state else []:
            pid = self.state.get("pids", {}).get(server.name)
            if pid and pid_alive(pid):
                os.killpg(pid, signal.SIGTERM)
        for server in self.servers if self.state else []:
            pid = self.state.get("pids", {}).get(server.name)
            if pid and not self._reap(pid):
                os.killpg(pid, signal.SIGKILL)
                self._reap(pid)
        if self.state:
            self.state["pids"] = {}
            self._save_state()
        if self.state and self.network is not None:
            self.network.down([s.name for s in self.servers])
        if wipe:
            self.unmount_data()

    def status(self) -> dict[str, str]:
        if not self.state:
            return {}
        return {s.name: ("running" if self.answers(s) else
                         "not answering" if self.is_running(s) else "stopped")
                for s in self.servers}


def serve(conf_path: str, section: str) -> int:
    """Run one Swift server of the dev cluster (``python -m zerocompute.dev.devcluster serve``)."""
    from swift.common import constraints, storage_policy, utils
    from swift.common.wsgi import run_wsgi
    utils.set_swift_dir(os.path.dirname(os.path.abspath(conf_path)))
    storage_policy.reload_storage_policies()
    constraints.reload_constraints()
    kwargs: dict[str, Any] = {"verbose": True}
    if section == "object-server":
        from swift.obj.server import global_conf_callback
        kwargs["global_conf_callback"] = global_conf_callback
    return run_wsgi(os.path.abspath(conf_path), section, **kwargs)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m zerocompute.dev.devcluster serve CONF SECTION")
