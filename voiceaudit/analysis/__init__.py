"""Analysis: per-turn latency ledger, hidden-delay findings, statistics, comparison.

The public surface::

    from voiceaudit.analysis import build_report, build_ledger, compare

    report = build_report(["run/trace.jsonl"])      # or Trace objects
    report.summary["voice_to_voice"].p95            # Summary per metric
    report.to_json()                                # voiceaudit.report/1

    ledger = build_ledger(events_of_one_turn)       # pure function of a turn's events
    sum(s.ns for s in ledger.segments) == ledger.voice_to_voice_ns

Phone paths and agents that speak first (the carrier's buffer, send-ahead, barge-in
through ``clear``, mark honesty, key presses, the greeting, the path of each result) are
in :mod:`voiceaudit.analysis.phone`; ``report.phone`` summarises them.

Statistics helpers (percentiles, bootstrap intervals, Mann-Whitney U) are in
:mod:`voiceaudit.analysis.stats`; they know nothing about traces.
"""

from voiceaudit.analysis.compare import Comparison, MetricComparison, compare
from voiceaudit.analysis.findings import KINDS, Finding, FindingRules
from voiceaudit.analysis.ledger import (
    ALL_SEGMENTS,
    SEGMENTS,
    UNEXPLAINED,
    Ledger,
    Segment,
    build_ledger,
    ledger_from_obs,
)
from voiceaudit.analysis.report import (
    REPORT_SCHEMA,
    VOICE_TO_VOICE,
    Report,
    ReportOptions,
    TurnReport,
    build_report,
)
from voiceaudit.analysis.stats import Summary, summarize

__all__ = [
    "ALL_SEGMENTS",
    "KINDS",
    "REPORT_SCHEMA",
    "SEGMENTS",
    "UNEXPLAINED",
    "VOICE_TO_VOICE",
    "Comparison",
    "Finding",
    "FindingRules",
    "Ledger",
    "MetricComparison",
    "Report",
    "ReportOptions",
    "Segment",
    "Summary",
    "TurnReport",
    "build_ledger",
    "build_report",
    "compare",
    "ledger_from_obs",
    "summarize",
]
