"""Errors raised by the data modules."""
from __future__ import annotations


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk (and downloading was not requested).

    The message is one line: where we looked and how to get the data.
    """
