"""The gevent engine: one greenlet per connection, running plain blocking-looking code.

Each module has its namesake in ``twisted_engine``: ``server`` (accept, limits,
shutdown), ``session`` (the read-run-reply loop), ``commands``, ``processes``
(child processes), ``follow`` and ``tls``. ``connection`` (lines in, replies out)
is what Twisted's transport and LineReceiver give the twin. Two faster pieces
stand in for gevent's own tools: ``fast_subprocess`` (gevent.subprocess's API,
``greencmd compare processes``) and ``bounded`` (a StreamServer bounded as a
``Pool`` would bound it, ``greencmd compare limits``).
"""
