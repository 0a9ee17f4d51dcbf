"""piwtwist: build wheels of every PyPI package for Raspberry Pi and friends,
on a single Twisted reactor."""

__version__ = "0.2.0"
