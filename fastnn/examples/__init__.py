"""Runnable examples: ``python -m fastnn.examples.<name> --help``."""
