"""zerocompute: storage-embedded compute for OpenStack Swift."""

__version__ = "0.1.0"
