"""Helpers shared by the tests (importable as ``helpers.<module>``: tests/conftest.py puts tests/ on the path)."""
