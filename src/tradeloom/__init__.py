"""Tradeloom: a multi-user algorithmic trading platform."""

__version__ = "0.1.0"
