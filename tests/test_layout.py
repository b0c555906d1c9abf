"""Output names shared by the CLI, both orchestrators and the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from busflow.layout import DATA_FILES, SPLIT_FILES, models_of_ensemble_fold, models_of_model_fold, run_dir_of


def test_the_run_folder_comes_from_a_contract_file_even_under_a_storage_prefix() -> None:
    assert run_dir_of("results/busi/split/folds.csv", SPLIT_FILES["folds"]) == "results/busi"
    assert run_dir_of(".snakemake/storage/s3/lab/results/busi/data/index.csv", DATA_FILES["index"]) == \
        ".snakemake/storage/s3/lab/results/busi"


def test_a_path_that_is_not_the_named_contract_file_is_refused() -> None:
    with pytest.raises(ValueError, match="not a run's split/folds.csv"):
        run_dir_of("results/busi/split/groups.csv", SPLIT_FILES["folds"])


def test_trained_folds_find_the_models_folder_of_their_run() -> None:
    assert models_of_model_fold(Path("results/busi/models/cascade/fold2")) == Path("results/busi/models")
    assert models_of_ensemble_fold(Path("results/busi/ensembles/mean/fold2")) == Path("results/busi/models")
