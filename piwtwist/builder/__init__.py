"""The builder machine's side of building wheels.

:mod:`~piwtwist.builder.sandbox` runs one ``pip wheel`` in a throwaway,
time- and memory-limited sandbox; :mod:`~piwtwist.wheels` reads
what the master records about each wheel it produced (tags, hash, Python and
system dependencies) without ever executing it;
:mod:`~piwtwist.builder.machine` describes the machine for the builder's
hello and its periodic statistics. None of them touches the network: the
builder service does that.
"""
