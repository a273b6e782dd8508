"""One module per source and wire format; each has a loopback server and a reconnecting client."""
