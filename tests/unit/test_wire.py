import pytest

from zerocompute import wire

PATH = "/sdb1/12/AUTH_t/c/o"


def test_round_trip():
    headers = wire.sign_task("s3cret", PATH, {"argv": ["x"]}, now=1000.0)
    task = wire.verify_task("s3cret", wire.METHOD, PATH, headers, now=1010.0)
    assert task["argv"] == ["x"] and task["ts"] == 1000.0


@pytest.mark.parametrize("secret, method, path, now", [
    ("other", wire.METHOD, PATH, 1000.0),      # wrong secret
    ("s3cret", "GET", PATH, 1000.0),           # replayed with another method
    ("s3cret", wire.METHOD, PATH + "x", 1000.0),  # replayed on another object
    ("s3cret", wire.METHOD, PATH, 1000.0 + wire.MAX_AGE_S + 1),  # stale
])
def test_refused(secret, method, path, now):
    headers = wire.sign_task("s3cret", PATH, {"argv": []}, now=1000.0)
    with pytest.raises(wire.BadSignature):
        wire.verify_task(secret, method, path, headers, now=now)


def test_tampered_task_refused():
    headers = wire.sign_task("s3cret", PATH, {"argv": ["a"]}, now=1.0)
    other = wire.sign_task("s3cret", PATH, {"argv": ["b"]}, now=1.0)
    headers[wire.TASK_HEADER] = other[wire.TASK_HEADER]
    with pytest.raises(wire.BadSignature):
        wire.verify_task("s3cret", wire.METHOD, PATH, headers, now=1.0)


def test_missing_headers_refused():
    with pytest.raises(wire.BadSignature):
        wire.verify_task("s3cret", wire.METHOD, PATH, {}, now=1.0)


def test_tail_round_trip():
    assert wire.decode_tail(wire.encode_tail("héllo\n".encode())) == "héllo\n"
    assert wire.decode_tail(None) == "" and wire.decode_tail("!!!") == ""
