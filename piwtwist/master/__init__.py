"""The master: one reactor, one service tree (see DESIGN.md)."""
