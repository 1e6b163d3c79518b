"""Load beyond one machine: voiceaudit sessions as Locust users.

:mod:`voiceaudit.load.locust` holds the Locust user class (optional extra ``load``:
``pip install 'voiceaudit[load]'``). This package itself imports nothing, so importing it
never pulls Locust (and gevent's monkey patching) into a process that did not ask for it.
"""
