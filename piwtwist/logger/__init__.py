"""``piw-logger``: web-server logs into the master's download statistics."""
