"""distill: see README.md (not yet implemented)."""
