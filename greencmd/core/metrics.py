"""``--metrics HOST:PORT``: the ``stats`` figures, command latency and the process, for Prometheus.

One registry per server: the ``stats`` counters read when scraped (nothing is
counted twice), a latency histogram labelled by command, and prometheus_client's
process metrics. How ``/metrics`` is served is each engine's business
(``gevent.pywsgi``, ``twisted.web``, an asyncio stream server); the page is made here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .stats import Stats

__all__ = ["Metrics", "CONTENT_TYPE", "REQUEST_SECONDS"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: A scraper whose request is not complete, or that sends no next one, within this
#: long is dropped: each connection left open holds a descriptor the command port needs.
REQUEST_SECONDS = 10.0
#: Latency buckets, in seconds: from a help (well under a millisecond) to a timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class StatsCollector:
    """The ``stats`` figures as Prometheus metrics, read from the counters at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self):
        """Gauges for what is open now, counters for what happened."""
        stats = self.stats
        yield GaugeMetricFamily("greencmd_sessions_open", "Sessions open now.",
                                value=stats.sessions_open)
        yield GaugeMetricFamily("greencmd_sessions_max", "Sessions allowed at once "
                                "(--max-clients).", value=stats.sessions_max)
        yield GaugeMetricFamily("greencmd_follows_open", "Follows streaming now.",
                                value=stats.follows_open)
        yield CounterMetricFamily("greencmd_sessions_accepted", "Connections accepted, "
                                  "refused ones included.", value=stats.accepted)
        yield CounterMetricFamily("greencmd_sessions_refused", "Connections refused: too many.",
                                  value=stats.refused)
        yield CounterMetricFamily("greencmd_commands_unknown", "Requests answered "
                                  "'Command not found.'", value=stats.unknown)
        commands = CounterMetricFamily("greencmd_commands", "Requests served, by command.",
                                       labels=["command"])
        for word, count in stats.commands.items():
            commands.add_metric([stats.labels[word]], count)
        yield commands


class Metrics:
    """The registry behind ``/metrics``."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(stats))
        ProcessCollector(registry=self.registry)
        self.latency = Histogram("greencmd_command_seconds", "Time from request to reply, "
                                 "by command.", ["command"], registry=self.registry,
                                 buckets=BUCKETS)

    def observe(self, word: bytes, seconds: float) -> None:
        """One answered request; only real commands get their own label."""
        self.latency.labels(self.stats.labels.get(word, "unknown")).observe(seconds)

    def page(self) -> bytes:
        """The ``/metrics`` page, in the Prometheus text format."""
        return generate_latest(self.registry)
