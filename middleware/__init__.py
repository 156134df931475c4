"""The Swift WSGI filters of zerocompute (``zerocompute.middleware``)."""
