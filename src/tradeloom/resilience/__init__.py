"""Resilience building blocks shared by every call that leaves the process."""
