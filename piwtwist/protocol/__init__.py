"""The AMP conversations between piwtwist's processes.

One module per conversation, each holding every command of that
conversation, saying who sends what, with an explicit ``errors`` map.  Several
conversations share one connection (a builder's link carries the build
conversation and the file transfer), so command names must be unique across
modules.
"""
