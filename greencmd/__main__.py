"""``python -m greencmd``: the same as the ``greencmd`` command."""

from .cli import main

main()
