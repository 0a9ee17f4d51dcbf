"""Talking to PyPI: its XML-RPC event journal, its JSON API, and the order
in which the journal's events should be applied.

:mod:`.http` holds what both APIs share (one polite client, timeouts,
back-off, rate-limit headers); :mod:`.xmlrpc` and :mod:`.json_api` are the two
clients; :mod:`.journal` turns the journal's raw entries into events and puts
them in a safe order.  The service that uses them is
:mod:`piwtwist.master.pypi_follower`.
"""
