"""Python users at home: a real Jupyter notebook, executed headless (nbclient and an
ipykernel on this virtual environment), runs word count with its own functions on the
dev cluster; the same functions are uploaded once; what cannot travel is refused
before anything is sent."""

import collections
import json
import os
import re
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

import zerocompute
from tests.functional.helpers import make_text
from zerocompute.api import CODE_CONTAINER
from zerocompute.shipping import CannotShip

CELLS = [
    # One cell defines the data the functions use ...
    "import re\nimport zerocompute\nfrom zerocompute import increment_counter\n"
    'WORD = re.compile(r"[a-z]+")\nSTOP = {"swift", "ring", "the"}',
    # ... another the functions ...
    "def mapper(line):\n"
    "    for word in WORD.findall(line.lower()):\n"
    "        if word not in STOP:\n"
    "            yield word, 1\n"
    "\n"
    "def reducer(word, counts):\n"
    "    return sum(counts)\n"
    "\n"
    "def lines_of(text):\n"
    "    return len(text.splitlines())\n"
    "\n"
    "def counting_mapper(line):\n"
    "    for word in WORD.findall(line.lower()):\n"
    "        increment_counter('words', 'stop' if word in STOP else 'kept')\n"
    "        yield len(word), 1",
    # ... and a third runs them where the data is.
    "zc = zerocompute.connect()\n"
    "job = zc.map_reduce(mapper, reducer, INPUTS, combiner=reducer, partitions=2,\n"
    "                    progress=False)\n"
    "counts = dict(job.results())\n"
    "print(job.status)\n"
    "print(json.dumps(counts))",
    "lines = zc.map(lines_of, INPUTS, progress=False).results()\n"
    "print(json.dumps(lines))",
    "counted = zc.map_reduce(counting_mapper, reducer, INPUTS, partitions=2, progress=False)\n"
    "print(json.dumps(counted.counters))\n"
    "print(json.dumps(sorted(counted.results())))",
]


@pytest.fixture
def corpus(cluster, unique):
    swift = cluster.connection()
    swift.put_container(f"nb-{unique}")
    texts = {f"doc-{i}.txt": make_text(400 + i, 80) for i in range(4)}
    for name, data in texts.items():
        swift.put_object(f"nb-{unique}", name, data)
    return f"swift://~/nb-{unique}/*.txt", texts


@pytest.fixture
def credentials(cluster, monkeypatch):
    auth_url, user, key = cluster.credentials()
    for name, value in (("ST_AUTH", auth_url), ("ST_USER", user), ("ST_KEY", key)):
        monkeypatch.setenv(name, value)


def plain_count(texts):
    word, stop = re.compile(r"[a-z]+"), {"swift", "ring", "the"}
    return collections.Counter(w for data in texts.values() for line in data.decode().split("\n")
                               for w in word.findall(line.lower()) if w not in stop)


def test_a_notebook_counts_words_with_its_own_functions(corpus, credentials):
    inputs, texts = corpus
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"import json\nINPUTS = {inputs!r}")] + [
        nbformat.v4.new_code_cell(source) for source in CELLS]
    with tempfile.TemporaryDirectory() as where:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": where}}).execute()
    outputs = ["".join(o.get("text", "") for o in cell.outputs) for cell in notebook.cells]
    status, counts = outputs[3].splitlines()
    assert status == "succeeded"
    counts = json.loads(counts)
    assert counts == dict(plain_count(texts))
    assert all(type(v) is int for v in counts.values())
    assert json.loads(outputs[4]) == [len(texts[name].decode().splitlines())
                                      for name in sorted(texts)]
    counters, by_length = outputs[5].splitlines()
    words = [w for data in texts.values() for w in re.findall(r"[a-z]+", data.decode().lower())]
    stop = sum(1 for w in words if w in {"swift", "ring", "the"})
    assert stop > 0
    assert json.loads(counters) == {"words": {"kept": len(words) - stop, "stop": stop}}
    assert json.loads(by_length) == sorted(
        [n, c] for n, c in collections.Counter(len(w) for w in words).items())


WORD = re.compile(r"[a-z]+")


def mapper(line):
    for word in WORD.findall(line.lower()):
        yield word, 1


def reducer(word, counts):
    return sum(counts)


LOG = open(os.devnull)  # noqa: SIM115 - what a user's notebook holds open


def logging_mapper(line):
    LOG.write(line)
    yield line, 1


def test_the_same_functions_are_uploaded_once(cluster, corpus, credentials):
    inputs, texts = corpus
    zc = zerocompute.connect()
    first = zc.map_reduce(mapper, reducer, inputs, progress=False)
    name = first.script.rsplit("/", 1)[1]
    before = zc.conn.head_object(CODE_CONTAINER, name)
    second = zc.map_reduce(mapper, reducer, inputs, progress=False)
    assert second.script == first.script
    after = zc.conn.head_object(CODE_CONTAINER, name)
    assert after["x-timestamp"] == before["x-timestamp"], "uploaded again"
    assert dict(first.results()) == dict(second.results()) != {}
    container, folder = first.report["outputs"][0].removeprefix("swift://").split(
        "/", 2)[1:]
    folder = folder.rsplit("/", 1)[0] + "/"
    assert first.delete_results() >= 3
    assert zc.conn.get_container(container, prefix=folder)[1] == []


def test_what_cannot_travel_is_refused_before_anything_is_sent(cluster, corpus, credentials):
    inputs, _texts = corpus
    zc = zerocompute.connect()
    code = _listing(zc, CODE_CONTAINER)
    jobs = [j["job"] for j in zc.jobs(limit=20)]
    with pytest.raises(CannotShip, match=r"logging_mapper -> LOG is a _io.TextIOWrapper"):
        zc.map_reduce(logging_mapper, reducer, inputs)
    assert _listing(zc, CODE_CONTAINER) == code, "nothing uploaded"
    assert [j["job"] for j in zc.jobs(limit=20)] == jobs, "nothing submitted"


def _listing(zc, container):
    try:
        return [o["name"] for o in zc.conn.get_container(container, full_listing=True)[1]]
    except Exception:  # noqa: BLE001 - no container yet: nothing in it
        return []
