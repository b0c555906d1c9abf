"""What happens to a sample that cannot be used (``data.on_bad_sample``): stop, or skip it and list it.

``error`` (the default) stops at the first bad sample with a message naming the file and the problem.
``skip`` leaves the sample out, prints how many were left out, and lists every one of them with its problem
in ``data/skipped.csv`` (a declared output, so the list is never lost and a change of it is seen by the
orchestrators); nothing is skipped silently. Problems of the dataset as a whole (no class folders, an
unknown class folder, an empty class) stop the run under both policies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from busflow.errors import DatasetError
from busflow.io import printable

POLICIES = ("error", "skip")
SKIPPED_COLUMNS = ["sample", "problem"]
T = TypeVar("T")


class BadSamples:
    """Collects per-sample problems under one policy."""

    def __init__(self, policy: str = "error") -> None:
        if policy not in POLICIES:
            raise DatasetError(f"data.on_bad_sample: '{policy}' is not one of {list(POLICIES)}")
        self.policy = policy
        self.skipped: list[dict[str, str]] = []

    def report(self, sample: str | os.PathLike[str], problem: str) -> None:
        """``problem`` names the file already (``<path>: <what is wrong>``): raised, or recorded."""
        if self.policy == "error":
            raise DatasetError(problem)
        self.skipped.append({"sample": printable(sample), "problem": problem})

    def attempt(self, sample: str | os.PathLike[str], action: Callable[[], T]) -> T | None:
        """``action()``, or None when it raised a DatasetError that the policy lets us skip."""
        try:
            return action()
        except DatasetError as error:
            self.report(sample, str(error))
            return None

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.skipped, columns=SKIPPED_COLUMNS)

    def summary(self, target: Path | str) -> str:
        if not self.skipped:
            return "no bad sample"
        return f"{len(self.skipped)} bad sample(s) skipped (data.on_bad_sample: skip), listed with their problem in {target}"
