"""Load generation and benchmark helpers (open-loop pacing)."""
