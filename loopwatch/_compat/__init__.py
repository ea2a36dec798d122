"""Every private or version-specific touch of another package, one module per dependency.

The rest of loopwatch calls the small, named functions here and never reads a private
attribute of asyncio, uvloop, prometheus_client, Starlette/FastAPI or discord.py itself.
Each function says which versions it was checked against; ``tests/test_compat.py`` holds a
canary per touch that fails loudly when an upgrade removes what it relies on.
"""
