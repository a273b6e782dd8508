"""The ``tradeloom`` command, one module per command group.

``app`` (the root command and ``serve``) lives in ``app.py``; each group (``users``/``accounts``,
``market``, ``orders``, ``positions``, ``demo``) has its own module, all entry points that reach
the services through ``bootstrap``.
"""

from tradeloom.cli.app import app

__all__ = ["app"]
