"""batch checks (being written)."""
