"""data checks (being written)."""
