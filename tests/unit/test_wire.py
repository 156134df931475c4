import io

import pytest

from zerocompute import wire

GROUP = wire.TaskGroup(
    job="j", exec_etag="0" * 32, exec_name="g.wasm", runtime="wasm", args=("a", "b"),
    env=(("LC_ALL", "C"),), limits=wire.Limits.from_dict({"time_s": 5.0, "memory_mb": 64}),
    tasks=(wire.TaskSpec("m00000", "sdb1", 12, "/AUTH_t/c/o", 0,
                         (("ZEROCOMPUTE_TASK", "m00000"),)),
           wire.TaskSpec("m00001", "sdb2", 7, "/AUTH_t/c/ö p", 1)))


def test_round_trip():
    body, headers = wire.sign_group("s3cret", GROUP, now=1000.0)
    group = wire.verify_group("s3cret", wire.METHOD, wire.TASKS_PATH, headers, body,
                              now=1010.0)
    assert group == GROUP.__class__(**{**GROUP.__dict__, "ts": 1000.0})
    assert group.tasks[1].disk_path == "/sdb2/7/AUTH_t/c/ö p"


@pytest.mark.parametrize("secret, method, path, now", [
    ("other", wire.METHOD, wire.TASKS_PATH, 1000.0),      # wrong secret
    ("s3cret", "GET", wire.TASKS_PATH, 1000.0),           # replayed with another method
    ("s3cret", wire.METHOD, "/elsewhere", 1000.0),        # replayed on another path
    ("s3cret", wire.METHOD, wire.TASKS_PATH, 1000.0 + wire.MAX_AGE_S + 1),  # stale
])
def test_refused(secret, method, path, now):
    body, headers = wire.sign_group("s3cret", GROUP, now=1000.0)
    with pytest.raises(wire.BadSignature):
        wire.verify_group(secret, method, path, headers, body, now=now)


def test_tampered_group_refused():
    body, headers = wire.sign_group("s3cret", GROUP, now=1.0)
    tampered = body.replace(b'"sdb1"', b'"sdb9"')
    assert tampered != body
    with pytest.raises(wire.BadSignature):
        wire.verify_group("s3cret", wire.METHOD, wire.TASKS_PATH, headers, tampered, now=1.0)


def test_missing_signature_or_body_refused():
    body, headers = wire.sign_group("s3cret", GROUP, now=1.0)
    with pytest.raises(wire.BadSignature):
        wire.verify_group("s3cret", wire.METHOD, wire.TASKS_PATH, {}, body, now=1.0)
    with pytest.raises(wire.BadSignature):
        wire.verify_group("s3cret", wire.METHOD, wire.TASKS_PATH, headers, b"", now=1.0)


def test_frames_round_trip_with_any_bytes_in_stdout():
    outputs = [b"line\nwith\nnewlines\n", b"", b"\0\xff" * 1000]
    stream = io.BytesIO(b"".join(
        wire.TaskResult(f"m{i}", exit=0, stdout_bytes=len(out), stderr="é\n").frame_head()
        + out for i, out in enumerate(outputs)))
    seen = []
    for result, body, head_bytes in wire.read_frames(stream):
        assert head_bytes == len(result.frame_head())
        seen.append((result.task, body.read(result.stdout_bytes)))
        assert result.stderr == "é\n" and result.completed
    assert seen == [(f"m{i}", out) for i, out in enumerate(outputs)]


def test_truncated_or_garbled_frames_are_refused():
    head = wire.TaskResult("m0", exit=0).frame_head()
    with pytest.raises(wire.BadFrame):
        list(wire.read_frames(io.BytesIO(head[:-5])))
    with pytest.raises(wire.BadFrame):
        list(wire.read_frames(io.BytesIO(b"not json\n")))
