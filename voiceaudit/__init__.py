"""voiceaudit: audit the latency of voice AI pipelines.

The public surface is small: the trace model and reader/writer. Everything else is
reached through the command line or its own module.

Layers, top to bottom; a module imports only from its own layer or those below it
(scripts/check_layers.py checks every import against this table):

1. ``cli``, ``load``
2. ``report``, ``gate``, ``exports``
3. ``analysis`` (statistics in ``analysis.stats`` and ``analysis.significance``, used by
   the gate), ``imports``, ``probe``
4. ``trace_io``, ``capture``, ``reference``, ``scenario``, ``impair`` (the network
   impairment layer)
5. ``targets``, ``model``, ``audio``, ``pacing`` (the deadline pacer the probe and
   ``impair`` share), ``pacing_stats`` (the measured pacing the probe writes and the
   report reads), ``data`` (the bundled utterances)
6. ``errors``, ``clock``, ``failures``, ``tomlpos``, ``codecs``, ``wavinfo`` (a WAV's text
   fields, which call recordings carry)

Within ``probe``, ``runner`` (the probe) imports ``conversation`` (scripted sessions), and
both import ``session`` (the turn machinery they share; a conversation reaches the probe
through its ``TurnHost`` protocol). The targets do not import the probe: a session that
needs the probe's warm-up first says so (``TargetSession.warm_up_first``) and the probe
runs it. ``impair`` paces packets with ``voiceaudit.pacing.Pacer``, below both it and the
probe, so ``analysis.network`` can read ``impair``'s records without a circle.

``scripts/check_layers.py`` (run by tests/test_layers.py) fails on a back edge, a cycle in
``probe``, and two packages or two modules that import each other.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
