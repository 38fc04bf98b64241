"""Differential tests: the same raw request sequences against our xenstored and the real cx.

See ``README.md`` in this folder for the layout, how to run it and how to read a failure.
"""
