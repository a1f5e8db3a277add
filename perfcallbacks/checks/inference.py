"""inference checks (being written)."""
