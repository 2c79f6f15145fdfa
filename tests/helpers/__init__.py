"""Plain helpers shared by the test modules (builders of small worlds, runners, constants); no tests here.

Tests import them as ``from helpers.<module> import ...`` (pytest puts ``tests/`` on ``sys.path``); the
layout of the test tree is described in ``tests/conftest.py``.
"""
