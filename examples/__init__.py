"""Runnable programs that embed the server's public API; run them from the repository root
as `python -m examples.<name>` (see examples/README.md)."""
