"""Metrics of the transfer tasks."""
