"""The shared core: what greencmd decides, for every engine and the client.

Framing, request parsing and reply texts (:mod:`.protocol`), the command table
(:mod:`.catalog`, :mod:`.programs`, :mod:`.plugins`), ``auth``, ``stats``,
settings and the config file, the log format, hashing and what ``tail`` is
asked. Nothing here opens a connection or waits for one, and nothing imports
gevent, Twisted or asyncio: the engine packages only wait, each in its style.
"""
