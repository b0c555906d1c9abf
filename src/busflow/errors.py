"""Errors that end a command with a message instead of a stack trace (``busflow.cli.main`` catches them)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on; the message says where it stopped and what to change."""
