"""Integration tests: the safe against a real PostgreSQL.

A package, so that its test modules (``test_pool``, ``test_vault``...) may share
basenames with unit tests without clashing under pytest's default import mode.
"""
