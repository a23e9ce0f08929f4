"""Test package for mailbot.

This file exists so that pytest's default ("prepend") import mode puts the
repository root on ``sys.path``; that makes ``tests.servers`` importable from
``tests/conftest.py`` no matter whether pytest is run as ``pytest`` or as
``python -m pytest``.
"""
