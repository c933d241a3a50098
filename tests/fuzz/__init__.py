# A package, so that tests/fuzz/conftest.py imports as ``fuzz.conftest`` and never replaces the top-level
# ``conftest`` module that other tests import helpers from (``from conftest import write_jsonl``).
