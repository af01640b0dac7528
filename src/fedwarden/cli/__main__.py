"""``python -m fedwarden.cli``: the ``fedwarden`` command."""

from fedwarden.cli import app

app()
