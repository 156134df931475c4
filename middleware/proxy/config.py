"""The proxy filter's options: each one, with its default, once.

``ProxyConfig.from_conf`` reads a paste filter section with Swift's own
helpers (``config_true_value``, ``config_positive_int_value``,
``non_negative_float``); the dataclass's defaults are the defaults, and
``etc/proxy-server.conf-sample`` and ``doc/deployment.md`` show the same
values (``tests/unit/test_config_docs.py`` holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from swift.common.utils import config_positive_int_value, config_true_value, non_negative_float

from zerocompute import wire
from zerocompute.scheduler import LOAD_AWARE
from zerocompute.scheduler import POLICIES as SCHEDULER_POLICIES

MIB = 1024 * 1024


def positive_float(value: Any) -> float:
    number = non_negative_float(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not greater than 0")
    return number


@dataclass(frozen=True)
class ProxyConfig:
    """The filter's settings, parsed once by :func:`filter_factory`."""

    secret: str  # shared with every object server's zerocompute_object filter
    swift_dir: str = "/etc/swift"
    # Per-task limits a manifest may lower, never raise (max_<limit> options).
    maximum: wire.Limits = field(default_factory=lambda: wire.Limits.from_conf({}))
    default_scheduler: str = LOAD_AWARE
    max_tasks: int = 10000
    max_manifest_bytes: int = 65536
    max_executable_bytes: int = 64 * MIB  # the option is max_executable_mb
    # Task-group requests of one job in flight at once, the most tasks one group
    # carries; also the number of output writes in flight.
    concurrency: int = 16
    max_group: int = 32
    backup_tasks: bool = True
    backup_factor: float = 2.0
    backup_min_s: float = 1.0
    conn_timeout: float = 0.5
    max_busy_wait_s: float = 300.0
    heartbeat_s: float = 10.0
    shuffle_buffer_bytes: int = wire.SHUFFLE_BUFFER_BYTES
    max_jobs_per_account: int = 8
    stream_encrypted_inputs: bool = True
    job_lease_s: float = 30.0
    job_poll_s: float = 1.0
    job_sweep_s: float = 0.0
    # Every job's record in the history is removed this long after it ends (Swift's
    # object expirer; 0: kept until deleted).
    job_history_days: float = 30.0

    @classmethod
    def from_conf(cls, conf: dict[str, str]) -> ProxyConfig:
        secret = conf.get("secret", "")
        if not secret:
            raise ValueError("zerocompute: 'secret' must be set (shared with object servers)")
        values: dict[str, Any] = {"secret": secret, "maximum": wire.Limits.from_conf(conf)}
        for option in fields(cls):
            if option.name in values or option.name == "max_executable_bytes":
                continue
            values[option.name] = _parse(option.name, conf.get(option.name, option.default),
                                         option.default)
        values["max_executable_bytes"] = config_positive_int_value(
            conf.get("max_executable_mb", cls.max_executable_bytes // MIB)) * MIB
        config = cls(**values)
        if config.default_scheduler not in SCHEDULER_POLICIES:
            raise ValueError(f"zerocompute: default_scheduler must be one of "
                             f"{', '.join(SCHEDULER_POLICIES)}")
        return config


# Options that must be greater than zero (a lease, a poll period).
_POSITIVE = {"job_lease_s", "job_poll_s"}


def _parse(name: str, raw: Any, default: Any) -> Any:
    if raw is default:
        return default
    try:
        if isinstance(default, bool):
            return config_true_value(raw)
        if isinstance(default, int):
            return config_positive_int_value(raw)
        if isinstance(default, float):
            return positive_float(raw) if name in _POSITIVE else non_negative_float(raw)
        return str(raw)
    except ValueError as err:
        raise ValueError(f"zerocompute: {name}: {err}") from None
