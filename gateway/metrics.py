"""Prometheus metrics of one gateway, in its own registry (several may share a process).

Under `serve --workers N` the supervisor sets PROMETHEUS_MULTIPROC_DIR: every worker
then also writes its values to files there, and /metrics of any worker renders all
of them merged (counters and histograms summed; each gauge as its mode below says,
over the workers alive).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Gauge modes for workers: livesum adds up what each holds, livemax/livemin show
        # the worst worker.
        r = self.registry
        self.connections = Gauge(
            "sitebuilder_connections",
            "Open websocket connections.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.subscriptions = Gauge(
            "sitebuilder_subscriptions",
            "Project subscriptions by state (pending: snapshot being taken).",
            ["state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.project_lists = Gauge(
            "sitebuilder_project_list_subscriptions",
            "Connections following their user's project list (subscribe_projects).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.held_changes = Gauge(
            "sitebuilder_held_changes",
            "Changes held for subscriptions whose snapshot or replay is being read "
            "(per connection at most SITEBUILDER_MAX_PENDING_EVENTS).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.outbound_bytes = Gauge(
            "sitebuilder_outbound_buffered_bytes",
            "Bytes written to connections and not yet taken by the kernel, all together "
            "(measured when scraped).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.largest_outbound_bytes = Gauge(
            "sitebuilder_connection_outbound_buffered_bytes_max",
            "The largest outbound buffer of one connection (measured when scraped; a "
            "connection past SITEBUILDER_MAX_OUTBOUND_BYTES is closed as a slow consumer).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.frames_in = Counter(
            "sitebuilder_frames_in", "Frames received, by type.", ["type"], registry=r
        )
        self.frames_out = Counter(
            "sitebuilder_frames_out", "Frames sent, by type.", ["type"], registry=r
        )
        self.events_delivered = Counter(
            "sitebuilder_events_delivered", "Change frames handed to subscribers.", registry=r
        )
        self.delivery_lag = Histogram(
            "sitebuilder_delivery_lag_seconds",
            "From a transaction's commit to the send of its changes to subscribers: one "
            "observation per transaction that reached anyone (per part of up to 1,000 "
            "changes of a larger one; per change from the NOTIFY feed), not per change.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.slow_consumer_closes = Counter(
            "sitebuilder_slow_consumer_closes",
            "Connections closed because their outbound buffer overflowed.",
            registry=r,
        )
        self.ping_timeouts = Counter(
            "sitebuilder_ping_timeouts",
            "Connections closed because no pong came in time (4010).",
            registry=r,
        )
        self.auth_failures = Counter(
            "sitebuilder_auth_failures",
            "Failed authentications, by reason.",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sitebuilder_rate_limited",
            "Frames refused by a limit, by limit.",
            ["limit"],
            registry=r,
        )
        self.ingress_paused_seconds = Counter(
            "sitebuilder_ingress_paused_seconds",
            "Seconds connections were not read, having sent more than "
            "SITEBUILDER_MAX_BYTES_PER_SECOND (their frames wait, none is refused).",
            registry=r,
        )
        self.feed_up = Gauge(
            "sitebuilder_feed_up",
            "1 while the change feed receives changes.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.feed_lag = Gauge(
            "sitebuilder_feed_lag_seconds",
            "Age of the last change the feed delivered, at delivery.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.feed_backlog = Gauge(
            "sitebuilder_feed_backlog",
            "Changes received from PostgreSQL, not yet routed.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.slot_lag_bytes = Gauge(
            "sitebuilder_slot_lag_bytes",
            "WAL the server keeps for the replication slot beyond what the gateway confirmed.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.history_bytes = Gauge(
            "sitebuilder_history_bytes",
            "Memory held by recent changes kept for resuming clients.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.feed_resets = Counter(
            "sitebuilder_feed_resets", "Times subscribers were told to resynchronise.", registry=r
        )
        self.sessions_cleaned = Counter(
            "sitebuilder_sessions_cleaned",
            "Old completed or cancelled builder sessions deleted by cleanup_old_sessions().",
            registry=r,
        )
        for state in ("pending", "live"):
            self.subscriptions.labels(state)

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
