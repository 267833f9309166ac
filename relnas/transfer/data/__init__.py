"""Data sets of the transfer tasks, read from their published on-disk formats."""
