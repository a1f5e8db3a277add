"""alignment checks (being written)."""
