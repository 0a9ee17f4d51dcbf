"""``piw-monitor``: watch and steer the master from a terminal.

:mod:`.model` holds what the master told us and decides what deserves an
alert; :mod:`.connection` keeps the connection to the master's control
queue; :mod:`.widgets` and :mod:`.app` draw it with urwid on Twisted's
reactor; :mod:`.cli` is the console script.
"""
