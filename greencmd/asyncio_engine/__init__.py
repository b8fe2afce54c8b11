"""The asyncio engine: one coroutine per connection, ``await`` wherever the others wait.

The standard library only: ``loop.sock_accept`` and ``connect_accepted_socket``, streams,
``asyncio.create_subprocess_exec``, an executor for hashing, timeouts, tasks and
their cancellation. Each module has its namesake in ``gevent_engine`` and
``twisted_engine`` (``server``, ``session``, ``connection``, ``commands``,
``processes``, ``follow``, ``tls``); ``greencmd compare`` shows the three side by side.
"""
