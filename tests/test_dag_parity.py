"""The Snakefile and dvc.yaml must describe one DAG: same stage names, commands and outputs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY_PARAMS, tool_env, workflow_copy
from dag import Job, dvc_jobs, dvc_missing_params, snakemake_jobs


@pytest.mark.parametrize("params", [REPO / "params.yaml", TINY_PARAMS], ids=["default", "tiny"])
def test_snakemake_and_dvc_describe_the_same_dag(tmp_path: Path, params: Path) -> None:
    project = workflow_copy(tmp_path / "project", params)
    snakemake, dvc = snakemake_jobs(project), dvc_jobs(project)
    assert len(snakemake) > 10
    only_snakemake = sorted(snakemake - dvc, key=str)
    only_dvc = sorted(dvc - snakemake, key=str)
    assert not only_snakemake and not only_dvc, f"Snakemake only: {only_snakemake}\nDVC only: {only_dvc}"


def _cascade_variants(tmp_path: Path, cascades: list[dict]) -> Path:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["cascades"] = cascades
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_no_cascade_and_two_cascades_give_the_same_dag_in_both_orchestrators(tmp_path: Path) -> None:
    """`cascades: []` switches the cascade off; two cascades with their own segmenter and classifier train side by
    side, each cropping its own segmenter's masks."""
    base = yaml.safe_load(TINY_PARAMS.read_text())["cascades"][0]
    other = {**base, "name": "cascade_mtl", "segmenter": "mtl_resnet50",
             "classifier": {**base["classifier"], "options": {"filters": [4, 8, 8, 16]}}}
    folds = len(yaml.safe_load(TINY_PARAMS.read_text())["train"]["folds"])
    for cascades in ([], [base, other]):
        project = workflow_copy(tmp_path / f"cascades{len(cascades)}", _cascade_variants(tmp_path, cascades))
        snakemake, dvc = snakemake_jobs(project), dvc_jobs(project)
        assert snakemake == dvc
        trained = [j for j in snakemake if j.name == "cascade"]
        assert len(trained) == folds * len(cascades)
        assert not any("/models/cascade" in output for j in snakemake if j.name != "cascade" and j.name.startswith("train")
                       for output in j.outputs)
        for job in trained:
            name = re.search(r"--model (\w+)", job.command).group(1)
            segmenter = {"cascade": base["segmenter"], "cascade_mtl": "mtl_resnet50"}[name]
            assert f"/models/{segmenter}/fold" in job.command.split("--segmenter ")[1].split()[0]
        report = next(j for j in snakemake if j.name == "report")
        assert report.outputs  # the report runs either way


def test_a_preset_switches_both_orchestrators(tmp_path: Path) -> None:
    """`snakemake --configfile <preset>` and `cp <preset> params.yaml && dvc repro` run the same jobs."""
    project = workflow_copy(tmp_path / "project", REPO / "params.yaml")
    preset = "config/presets/busi.yaml"
    snakemake = {Job(j.name, j.command.replace(f"--params {preset}", "--params params.yaml"), j.outputs)
                 for j in snakemake_jobs(project, "--configfile", preset)}
    assert any("results/busi/split/groups.csv" in j.outputs for j in snakemake)
    shutil.copy2(project / preset, project / "params.yaml")
    assert snakemake == dvc_jobs(project)


def test_the_cross_preset_dry_runs_with_its_external_job_and_matrix(tmp_path: Path) -> None:
    project = workflow_copy(tmp_path / "project", REPO / "params.yaml")
    jobs = snakemake_jobs(project, "--configfile", "config/presets/cross.yaml")
    external = [j for j in jobs if j.name == "external"]
    assert len(external) == 1 and external[0].outputs == {"results/cross/external"}
    report = next(j for j in jobs if j.name == "report")
    assert {"results/cross/report/tables/cross_dataset.csv", "results/cross/report/figures/cross_dataset.png"} <= report.outputs


@pytest.mark.parametrize("params", [REPO / "params.yaml", TINY_PARAMS, *sorted((REPO / "config" / "presets").glob("*.yaml"))],
                         ids=lambda p: p.stem)
def test_every_param_dvc_tracks_is_in_the_file(tmp_path: Path, params: Path) -> None:
    assert dvc_missing_params(workflow_copy(tmp_path / "project", params)) == {}


def test_config_overrides_are_refused(tmp_path: Path) -> None:
    project = workflow_copy(tmp_path / "project", TINY_PARAMS)
    result = subprocess.run(["snakemake", "-n", "--cores", "1", "--config", "seed=3"], cwd=project, env=tool_env(),
                            capture_output=True, text=True)
    assert result.returncode != 0 and "--config overrides are not seen by the busflow commands" in result.stdout + result.stderr


def test_parity_check_detects_drift(tmp_path: Path) -> None:
    """A changed command in dvc.yaml alone must show up as a difference."""
    project = workflow_copy(tmp_path / "project", TINY_PARAMS)
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("busflow split --params", "busflow split --verbose --params", 1))
    assert snakemake_jobs(project) != dvc_jobs(project)


def test_snakemake_lint_is_clean(tmp_path: Path) -> None:
    from conftest import run_tool

    project = workflow_copy(tmp_path / "project", REPO / "params.yaml")
    result = run_tool(["snakemake", "--lint"], project)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr
