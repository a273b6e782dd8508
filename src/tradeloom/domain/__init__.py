"""The pure vocabulary of trading: numbers, orders, commands and events.

Nothing here performs I/O or imports a framework; every other package builds on it.
"""
