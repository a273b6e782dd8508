"""The web tier: REST, SSE and the dashboard. An entry point: it reaches services through
the platform that ``bootstrap`` builds."""
