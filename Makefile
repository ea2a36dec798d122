# Conveniences over dev.py, which needs nothing but Python.
.PHONY: demo test bench transparency

demo:
	python3 dev.py demo

test:
	python3 dev.py test

bench:
	.venv/bin/python benchmarks/reentry_fastpath.py

# CPython's test_asyncio bare vs under `loopwatch run`, on every Python with a venv (see
# docs/transparency.md); `make test` builds the venvs.
transparency:
	python3 .ci/transparency.py
