"""Servers the benchmark compares us with: an ASGI app for hypercorn and uvicorn, and bare h11 loops."""
