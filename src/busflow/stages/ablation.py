"""``busflow queue-ablation``: the ablation grid as queued DVC experiments, one per (learning rate × option set).

Under Snakemake (and ``dvc repro``) the grid runs as ``train --lr --variant`` jobs; this command is the DVC
experiments route to the same cells (``dvc queue start -j N`` then ``dvc exp show``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

from busflow.errors import BusflowError, ParamsError
from busflow.layout import ablation_cell


def experiment_commands(params: Mapping[str, Any], source: str = "params") -> list[list[str]]:
    """One ``dvc exp run --queue`` command per cell of the grid, each setting its lr and options with ``-S``."""
    ablation = params["ablation"]
    if ablation["model"] is None:
        raise ParamsError(f"{source}: ablation.model is null, there is no grid to queue")
    key = f"models.{ablation['model']}"
    commands = []
    for lr in ablation["lr"]:
        for variant, options in ablation["options"].items():
            overrides = [f"{key}.lr={lr}", *(f"{key}.options.{name}={json.dumps(value)}" for name, value in options.items())]
            name = ablation_cell(lr, variant).replace("_", "-").replace(".", "p")
            commands.append(["dvc", "exp", "run", "--queue", "--name", name, *[part for o in overrides for part in ("-S", o)]])
    return commands


def run(params: Mapping[str, Any], *, source: str = "params", dry_run: bool = False, log: Callable[[str], None] = print) -> None:
    """Print the commands and, unless ``dry_run``, run them; a failing one stops with its command line."""
    for command in experiment_commands(params, source):
        log(shlex.join(command))
        if not dry_run and subprocess.run(command).returncode:
            raise BusflowError(f"`{shlex.join(command)}` failed (run it from a git + DVC repository holding this project)")
    log("then: dvc queue start -j N && dvc exp show" if not dry_run else "(dry run: nothing queued)")
