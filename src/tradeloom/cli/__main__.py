"""``python -m tradeloom.cli``: the ``tradeloom`` command without the installed script."""

from tradeloom.cli.app import app

app(prog_name="tradeloom")
