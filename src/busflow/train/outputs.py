"""What every trained network leaves in ``models/<model>/fold<k>/`` (the data contracts of docs/architecture.md):
weights, model card, history and dvclive curves; and reading them back."""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from busflow.errors import ModelFileError
from busflow.io import atomic_path, write_csv
from busflow.layout import DVCLIVE_DIR
from busflow.model_card import CARD_FILE, NetworkCard, read_card, write_card

EPOCH_METRICS: tuple[str, ...] = ("train_loss", "val_loss", "val_score", "lr")


def save_weights(path: Path, model: nn.Module) -> None:
    """State dict only (loadable with ``weights_only=True``): no pickled code travels with a model. Tensors are
    stored contiguous, whatever layout (e.g. channels_last) they were trained in."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> nn.Module:
    """Weights into ``model``; tensors that do not fit its architecture are an error naming ``source``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_problem = str(error).strip().splitlines()[1:2] or [str(error)]
        raise ModelFileError(f"{source}: the weights do not fit the network described with them ({first_problem[0].strip()})") from None
    return model


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    """A plain state dict, read with ``weights_only=True``: a file that would run pickled code is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFileError(f"{path}: refused: it holds objects other than tensors, and loading them would run code "
                             "from the file (busflow saves plain state dicts only)") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelFileError(f"{path}: not a readable weights file ({error})") from None
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{path}: not a state dict (found {type(state).__name__})")
    return load_state(model, state, path)


def build_described(card: NetworkCard, source: Path) -> nn.Module:
    """The (untrained) network a model card names, normalising its inputs as recorded; an unknown architecture is an
    error naming ``source``."""
    from busflow.models import UnknownArchitectureError, build_model
    from busflow.models.pretrained import attach_input_normalization

    try:
        model = build_model(card.arch, in_channels=card.in_channels, n_classes=card.n_classes, options=card.options)
    except UnknownArchitectureError as error:
        raise ModelFileError(f"{source}: {error}") from None
    return attach_input_normalization(model, card.input_normalization)


def load_trained(model_dir: Path) -> tuple[nn.Module, NetworkCard]:
    """The network of a trained model folder, rebuilt from its model.json and weights.pt, in eval mode."""
    card = read_card(model_dir)
    if not isinstance(card, NetworkCard):
        raise ModelFileError(f"{model_dir / CARD_FILE}: an ensemble, not a trained network")
    model = build_described(card, model_dir / CARD_FILE)
    return load_weights(model_dir / "weights.pt", model).eval(), card


@contextlib.contextmanager
def epoch_logger(out_dir: Path) -> Iterator[Callable[[Mapping[str, float]], None]]:
    """dvclive logging of the per-epoch history into ``out_dir/dvclive`` (``dvc plots show`` reads it).

    dvclive only writes files here: it neither edits dvc.yaml nor saves a DVC experiment.
    """
    from dvclive import Live

    with Live(str(out_dir / DVCLIVE_DIR), save_dvc_exp=False, dvcyaml=False, report=None) as live:
        def log_epoch(row: Mapping[str, float]) -> None:
            for name in EPOCH_METRICS:
                if math.isfinite(row[name]):
                    live.log_metric(name, float(row[name]), plot=True)
            live.next_step()

        yield log_epoch


def save_run(out_dir: Path, model: nn.Module, card: NetworkCard, history: pd.DataFrame) -> None:
    save_weights(out_dir / "weights.pt", model)
    write_card(out_dir, card)
    write_csv(out_dir / "history.csv", history)
