"""Prometheus metrics of one process.

The metrics live on a registry owned by the platform (not the library's global one), so two
platforms in one test never share counters. ``/metrics`` on the web app exposes it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Lags of eventually consistent views: from milliseconds to "a consumer is minutes behind".
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0)


class Metrics:
    """Every metric the platform records, created once per process on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.handler_failures = Counter(
            "tradeloom_handler_failures",
            "Observer handlers that raised, by consumer and handler",
            ["consumer", "handler"],
            registry=self.registry,
        )
        self.feed_messages = Counter(
            "tradeloom_feed_messages",
            "Messages read from market-data feeds, by feed and outcome (ok, malformed)",
            ["feed", "outcome"],
            registry=self.registry,
        )
        self.feed_reconnects = Counter(
            "tradeloom_feed_reconnects",
            "Reconnections of market-data feeds",
            ["feed"],
            registry=self.registry,
        )
        self.price_updates = Counter(
            "tradeloom_price_updates",
            "Price updates by stage (published, consumed, stale)",
            ["stage"],
            registry=self.registry,
        )
        self.candles_closed = Counter(
            "tradeloom_candles_closed",
            "Candles closed, by interval",
            ["interval"],
            registry=self.registry,
        )
        self.feed_to_cache_seconds = Histogram(
            "tradeloom_feed_to_cache_seconds",
            "From a price update's receipt by a feed to its last price in the cache",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.risk_check_seconds = Histogram(
            "tradeloom_risk_check_seconds",
            "Pre-trade risk check latency",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.projection_lag_seconds = Histogram(
            "tradeloom_projection_lag_seconds",
            "From an event's occurred_at to a projection having applied it, by consumer group",
            ["group"],
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.position_update_lag_seconds = Histogram(
            "tradeloom_position_update_lag_seconds",
            "From a fill event's occurred_at to its position row being committed",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.events_projected = Counter(
            "tradeloom_events_projected",
            "Events a projection received, by consumer group and outcome (applied, duplicate)",
            ["group", "outcome"],
            registry=self.registry,
        )
        self.notifications_sent = Counter(
            "tradeloom_notifications_sent",
            "Messages published to users' streams, by kind (order, position)",
            ["kind"],
            registry=self.registry,
        )
        self.reconciled_orders = Counter(
            "tradeloom_reconciled_orders",
            "Open orders execution compared with the broker's at start, by outcome (not_sent:"
            " rejected, never acknowledged and not at the broker; venue_lost: canceled, the"
            " broker no longer has it; at_broker: left alone; in_transit: left for the next"
            " start, a report of it was still being recorded)",
            ["outcome"],
            registry=self.registry,
        )
        self.execution_active = Gauge(
            "tradeloom_execution_active",
            "1 while this process runs execution (holds the execution lock and consumes"
            " commands), 0 while it stands by for another process or is stopped",
            registry=self.registry,
        )
        self.reconciliation_failures = Counter(
            "tradeloom_reconciliation_failures",
            "Reconciliations with the broker that changed nothing because the broker could not"
            " be asked or the outcome could not be stored (retried)",
            registry=self.registry,
        )
        self.price_subscribers = Gauge(
            "tradeloom_price_subscribers",
            "Local subscribers of per-symbol price channels",
            registry=self.registry,
        )
