"""Online store backends behind one protocol, the near-cache and its invalidation link.

``protocol`` (view sets, ``Rows`` with ages and flags, consistency classes, the
``OnlineStore`` protocol) and ``memory`` (the embedded store behind that protocol) need
nothing beyond the core.  ``redis``, ``cached`` (near-cache front) and ``asyncstore`` need
the ``redis`` extra (``pip install tailguard[redis]``), so this package imports nothing
eagerly: import the module you use.
"""
