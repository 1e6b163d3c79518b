"""The probe's pacer: :class:`voiceaudit.pacing.Pacer`, which lives below the probe so that
``impair`` can pace packets with it too; re-exported here where the probe and its users
have always found it."""

from __future__ import annotations

from voiceaudit.pacing import DEFAULT_SPIN_NS, Pacer

__all__ = ["DEFAULT_SPIN_NS", "Pacer"]
