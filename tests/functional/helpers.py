import json
import random
import urllib.error
import urllib.request

from zerocompute.dev.demo import count_words
from zerocompute.dev.devcluster import DevCluster

WORDS = ("storage compute swift object ring replica proxy account container partition "
         "wasm sandbox guest map reduce shuffle record key value node disk etag policy").split()


def own_cluster(tmp_path_factory, name: str, **options):
    """A dev cluster of a test module's own, for its fixture to ``yield from``: started
    in a fresh directory, stopped and wiped when the fixture ends."""
    dev = DevCluster(str(tmp_path_factory.mktemp(name)), **options).start()
    try:
        yield dev
    finally:
        dev.stop(wipe=True)


def make_text(seed: int, words: int = 300) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(words // 10):
        lines.append(" ".join(rng.choice(WORDS).capitalize() if rng.random() < 0.2
                              else rng.choice(WORDS) for _ in range(10)) + ".")
    return ("\n".join(lines) + "\n").encode()


def expected_counts(data: bytes) -> bytes:
    """What `wordcount count` prints for ``data``."""
    return b"".join(f"{w}\t{n}\n".encode() for w, n in sorted(count_words(data).items()))


def post_job(cluster, token_user, body: bytes, account: str = "test"):
    """POST a raw manifest; return (status, parsed JSON body)."""
    conn = cluster.connection(token_user)
    url, token = conn.get_auth()
    url = cluster.storage_url(account) if account else url
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "X-Auth-Token": token, "X-Zerocompute-Execute": "1",
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def listing(swift, container):
    return [item["name"] for item in swift.get_container(container, full_listing=True)[1]]
