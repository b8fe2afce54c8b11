"""Example greencmd plugin commands (see commands.py)."""
