"""datasets: see README.md (not yet implemented)."""
