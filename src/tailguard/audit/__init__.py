"""A tamper-evident log of every decision (docs/audit.md): format, writer, verifier."""
