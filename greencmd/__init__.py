"""greencmd: a tiny line-based TCP command server on gevent, with its Twisted twin."""

__version__ = "0.1.0"
