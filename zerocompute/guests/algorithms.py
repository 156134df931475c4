"""The MapReduce paper's examples with the zerocompute guest SDK (as algorithms.c).

The first argument is the mode (map, reduce); ALGORITHM in the environment
picks the example: grep (with PATTERN), url, links or index.
"""

import os

ALGORITHM = os.environ.get("ALGORITHM", "grep")
PATTERN = os.environ.get("PATTERN", "")
DOCUMENT = os.environ.get("ZEROCOMPUTE_INPUT", "?").rsplit("/", 1)[-1]


def words(line):
    word = ""
    for c in line + " ":
        if c.isascii() and c.isalnum():
            word += c.lower()
        elif word:
            yield word
            word = ""


def map(record):
    if ALGORITHM == "grep":
        if PATTERN in record:
            yield record, 1
    elif ALGORITHM == "url":
        fields = record.split(" ")
        if len(fields) > 1 and fields[1]:
            yield fields[1], 1
    elif ALGORITHM == "links":
        source, *targets = record.split(" ")
        for target in targets:
            yield target, source
    elif ALGORITHM == "index":
        for word in words(record):
            yield word, DOCUMENT


def reduce(key, values):
    if ALGORITHM in ("grep", "url"):
        return sum(values)
    return ",".join(sorted(set(values)))
