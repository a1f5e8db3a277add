"""padding checks (being written)."""
