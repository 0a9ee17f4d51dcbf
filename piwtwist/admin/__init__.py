"""The admin tools: ``piw-import``, ``piw-add``, ``piw-remove`` and
``piw-rebuild``, each one request over the master's ``--import-queue``."""
