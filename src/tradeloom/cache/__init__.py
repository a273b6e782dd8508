"""The cache: hot key/value state with TTLs, atomic scripts, rate counters and pub/sub."""
