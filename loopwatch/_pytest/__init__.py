"""The pytest plugin's implementation (the entry point is :mod:`loopwatch.pytest_plugin`)."""
