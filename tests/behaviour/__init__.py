"""Black-box behavioural suite: the real server as a subprocess, over loopback sockets.

Every test runs once per transport (trio, asyncio, threads); see `conftest.py` for the
fixtures and `client.py` for the strict h11-based client. Run it with
`.venv/bin/python -m pytest tests/behaviour` (`-k threads` for one transport).
`BEHAVIOUR_SERVER_MODULE=pkg` runs it against `python -m pkg` instead of `transports`.
"""
