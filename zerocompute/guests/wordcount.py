"""Word count with the zerocompute guest SDK: the same words as wordcount.c."""

import re

WORD = re.compile(r"[A-Za-z0-9]+")


def map(record):
    for word in WORD.findall(record):
        yield word.lower(), 1


def reduce(key, values):
    return sum(values)
