"""The event bus: the port every service publishes and consumes through, and its adapters."""
