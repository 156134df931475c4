"""Every option either filter reads is in its ``etc/`` sample and in ``doc/deployment.md``,
with the same default; and the samples name no option the code does not read.

What the filters read is recorded by running their config parsers over a
dict that notes every key asked for: nothing is listed by hand here.
"""

import os
import re

import pytest

from zerocompute.middleware.proxy.config import ProxyConfig
from zerocompute.middleware.task import TaskFilterConfig

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# Read from the server's own [DEFAULT] section, not options of the filter.
SERVER_OPTIONS = {"bind_ip", "bind_port"}


class RecordingConf(dict):
    """A filter's conf that notes each key read, and the default the code gave."""

    def __init__(self, *args):
        super().__init__(*args)
        self.defaults: dict[str, object] = {}

    def get(self, key, default=None):
        self.defaults.setdefault(key, default)
        return super().get(key, default)

    def __getitem__(self, key):
        self.defaults.setdefault(key, None)
        return super().__getitem__(key)


def options_read(parse) -> dict[str, object]:
    conf = RecordingConf({"secret": "s"})
    parse(conf)
    return {k: v for k, v in conf.defaults.items() if k not in SERVER_OPTIONS}


def sample_options(name: str, section: str) -> dict[str, str]:
    """The options of a sample's section, commented out or not, with their values."""
    with open(os.path.join(ROOT, "etc", name)) as f:
        text = f.read()
    body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    found = {}
    for line in body.splitlines():
        match = re.match(r"^#?\s*([a-z_]+)\s*=\s*(.*)$", line.strip())
        if match and match.group(1) != "use":
            found[match.group(1)] = match.group(2).strip()
    return found


def doc_table(section: str) -> dict[str, str]:
    with open(os.path.join(ROOT, "doc", "deployment.md")) as f:
        text = f.read()
    body = text.split(f"`[{section}]`", 1)[1].split("\n#", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)` \| ([^|]+) \|",
                                                         body, re.M)}


FILTERS = [
    ("proxy-server.conf-sample", "filter:zerocompute", ProxyConfig.from_conf),
    ("object-server.conf-sample", "filter:zerocompute_object", TaskFilterConfig.from_conf),
]


@pytest.mark.parametrize("sample, section, parse", FILTERS)
def test_every_option_read_is_in_the_sample_and_the_doc(sample, section, parse):
    read = options_read(parse)
    assert len(read) >= 5
    in_sample = sample_options(sample, section)
    in_doc = doc_table(section)
    assert sorted(set(read) - set(in_sample)) == [], f"missing from etc/{sample}"
    assert sorted(set(read) - set(in_doc)) == [], "missing from doc/deployment.md"
    # Nothing documented that the code does not read (a renamed option would hide).
    assert sorted(set(in_sample) - set(read)) == []
    assert sorted(set(in_doc) - set(read)) == []


def same(shown: str, default: object) -> bool:
    shown = shown.strip().strip("`").lower()
    if shown in ("", "(none)"):
        return default in ("", None)
    try:
        return float(shown) == float(default)
    except (TypeError, ValueError):
        return shown == str(default).lower()


@pytest.mark.parametrize("sample, section, parse", FILTERS)
def test_documented_defaults_are_the_codes(sample, section, parse):
    in_sample = sample_options(sample, section)
    in_doc = doc_table(section)
    for key, default in options_read(parse).items():
        if key in ("secret", "slots", "queue"):  # required, or computed from the machine
            continue
        assert same(in_sample[key], default), (sample, key, in_sample[key], default)
        assert same(in_doc[key], default), ("doc/deployment.md", key, in_doc[key], default)
