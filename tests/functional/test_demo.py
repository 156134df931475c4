"""The README's demo: its word counts must equal a plain-Python count."""

import os
import re
import subprocess
import sys

from zerocompute.dev.demo import corpus, count_words


def test_demo_prints_counts_equal_to_plain_python():
    zc = os.path.join(os.path.dirname(sys.executable), "zerocompute")
    done = subprocess.run([zc, "demo"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = count_words(b"\n".join(corpus().values()))

    total, distinct = map(int, re.search(r"^(\d+) words, (\d+) distinct", done.stdout,
                                         re.M).groups())
    assert (total, distinct) == (sum(expected.values()), len(expected))
    printed = re.findall(r"^  ([a-z0-9]+) +(\d+)$", done.stdout, re.M)
    assert len(printed) == 15
    for word, n in printed:
        assert expected[word] == int(n), word
    assert [w for w, _ in printed] == [w for w, _ in sorted(
        expected.items(), key=lambda kv: (-kv[1], kv[0]))[:15]]
    assert "equal a plain-Python count" in done.stdout
    # Every task ran on a node that holds its input.
    tasks = re.findall(r"-> \S+ \((local|remote)\)", done.stdout)
    assert len(tasks) == len(corpus()) and set(tasks) == {"local"}
