"""neural_mesh: see README.md (not yet implemented)."""
