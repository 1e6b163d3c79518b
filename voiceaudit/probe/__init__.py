"""The probe: the client side of ``voiceaudit run``.

``runner`` replays speech through a target at real-time pace and writes the trace;
``conversation`` runs scripted sessions (``--scenario``) through an open microphone; both
drive turns through ``session`` (the turn machinery they share). ``options`` holds the
run's options, ``playout`` the reply's onset and playout analysis, ``warm`` the warm-up,
``utterances`` the speech it replays. The targets (voiceaudit.targets) speak the
protocols; the probe never imports a protocol adapter's internals.

This ``__init__`` imports nothing, so that importing one module of the probe does not
import the rest (and no module here imports from its package).
"""
