"""Dev clusters share the machine's compiled modules; wiping one keeps them."""

import os
import shutil

from zerocompute.dev import devcluster
from zerocompute.sandbox.wasm import WasmRuntime


def test_two_clusters_share_what_either_compiled_and_a_wipe_keeps_it(tmp_path, monkeypatch):
    machine = tmp_path / "machine-cache"
    monkeypatch.setattr(devcluster, "COMPILED_DIR", str(machine))
    first, second = tmp_path / "one" / "cache", tmp_path / "two" / "cache"
    for cache in (first, second):
        devcluster.share_compiled_modules(str(cache))
        devcluster.share_compiled_modules(str(cache))  # a restart changes nothing
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(b"\0asm\1\0\0\0")  # the empty module
    WasmRuntime(str(first)).prepare(str(wasm))
    compiled = [n for n in os.listdir(second / "compiled") if n.endswith(".cwasm")]
    assert len(compiled) == 1
    shutil.rmtree(tmp_path / "one")  # what stop --wipe does
    assert compiled[0] in os.listdir(machine)
