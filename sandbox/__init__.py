"""WebAssembly execution for zerocompute (``zerocompute.sandbox``)."""
