"""Moving wheels to the master: verified, chunked and resumable.

The master pulls (:mod:`piwtwist.protocol.transfer`): a
:class:`~piwtwist.transfer.sender.FileSender` on the builder or admin tool
offers files and answers ``FetchChunks``; the master's
:class:`~piwtwist.transfer.receiver.FileReceiver` asks for the ranges it
lacks with a bounded window of requests, keeps what it received across
dropped connections and restarts, checks the sha256, and only then renames
the wheel into the output tree.
"""
