"""streamproc: order stream processing on Redis Streams."""

__version__ = "0.1.0"
