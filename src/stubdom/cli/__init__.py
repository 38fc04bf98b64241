"""The ``stubdom`` command line."""
