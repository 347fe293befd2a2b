"""Harnesses and data that several test folders share, imported as ``helpers.<module>``.

pytest.ini puts test/ on sys.path, so ``from helpers.policy_node import write_policy`` works from
any test folder; test modules never import each other. Fixtures built on these live in
test/conftest.py.
"""
