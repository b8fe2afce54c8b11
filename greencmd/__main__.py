"""``python -m greencmd``: the same as the ``greencmd`` command."""

from .tools.cli import main

main()
