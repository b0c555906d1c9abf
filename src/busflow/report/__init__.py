"""Report stage: tables, figures, Markdown and HTML summarising a busflow run.

Entry point: :func:`busflow.report.build.build_report` (called by :mod:`busflow.stages.report`). The tables and
figures are listed once in :mod:`busflow.report.registry` (their file names in :mod:`busflow.layout`), the metrics
they show in :mod:`busflow.evaluate.catalogue`. No torch import anywhere in this package.
"""
