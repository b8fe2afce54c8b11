"""The client side: one server (``single``), many at once (``fleet``), host lists (``hosts``)."""
