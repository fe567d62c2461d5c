"""The ``robodual`` command line."""
