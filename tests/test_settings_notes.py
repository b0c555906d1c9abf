"""The settings a params file marks as busflow's choice or as a deviation, read from the file's own lines."""

from __future__ import annotations

from pathlib import Path

from busflow.settings_notes import SettingNote, file_notes, settings_notes

REPO = Path(__file__).resolve().parents[1]


def test_a_planted_deviation_is_listed_with_its_path_value_and_reason_and_nothing_else() -> None:
    text = (REPO / "config" / "presets" / "p003.yaml").read_text(encoding="utf-8")
    assert settings_notes(text) == []  # P003's preset marks nothing
    planted = text.replace("    lr_step: {epochs: 20, gamma: 0.1}\n",
                           "    lr_step: {epochs: 20, gamma: 0.1}   # deviation: the paper's step is 20 epochs too\n", 1)
    assert settings_notes(planted) == [SettingNote("models.resnet50.lr_step", "{epochs: 20, gamma: 0.1}", "deviation",
                                                   "the paper's step is 20 epochs too")]


def test_nesting_comment_lines_and_both_kinds() -> None:
    text = """# a heading comment that says busflow's choice is not a setting
preprocess:
  size: 224                     # busflow's choice (ViT-B/16 patch grid)
  classes: [benign, malignant]  # plain comment
models:
  unet: &base
    epochs: 60                  # Deviation: 500 in the paper
    batch_size: 16
cascades:
  - name: wide
    crop_size: 128              # busflow's choice
    classifier:
      epochs: 9                 # deviation: 90 in the paper
  - segmenter: unet             # busflow's choice: an unnamed item
evaluate:
  threshold: 0.4                # busflow's choice
"""
    assert settings_notes(text) == [
        SettingNote("preprocess.size", "224", "busflow's choice", "ViT-B/16 patch grid"),
        SettingNote("models.unet.epochs", "60", "deviation", "500 in the paper"),
        SettingNote("cascades.wide.crop_size", "128", "busflow's choice", "not stated"),
        SettingNote("cascades.wide.classifier.epochs", "9", "deviation", "90 in the paper"),
        SettingNote("cascades.-.segmenter", "unet", "busflow's choice", "an unnamed item"),
        SettingNote("evaluate.threshold", "0.4", "busflow's choice", "not stated"),
    ]


def test_every_paper_preset_marks_its_deviations_with_a_reason() -> None:
    notes = {path.stem: file_notes(path) for path in sorted((REPO / "config" / "presets").glob("p00*.yaml"))}
    deviations = [note for found in notes.values() for note in found if note.kind == "deviation"]
    assert deviations and all(note.reason != "not stated" for note in deviations)


def test_config_readme_lists_exactly_what_the_presets_mark() -> None:
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from preset_notes import CONFIG_README, expected_readme

    current = CONFIG_README.read_text(encoding="utf-8")
    assert expected_readme(current) == current
