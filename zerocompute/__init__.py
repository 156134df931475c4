"""zerocompute: storage-embedded compute for OpenStack Swift.

``zerocompute.connect()`` is the Python API (:mod:`zerocompute.api`).
"""

__version__ = "0.1.0"
_API = ("connect", "Job", "JobFailed", "Zerocompute")


def __getattr__(name: str):
    # Loaded when first used: the object servers and the CLI import this package too.
    if name in _API:
        from zerocompute import api
        return getattr(api, name)
    if name == "increment_counter":  # in a function shipped to the guests
        from zerocompute.sandbox.zerocompute_guest import increment_counter
        return increment_counter
    raise AttributeError(f"module 'zerocompute' has no attribute {name!r}")
