"""Ablation studies: variants x seeds over one base params.yaml (``studies/<name>/study.yaml``).

- :mod:`adaskip.ablation.spec`: the study file, its variants and cells (validated params per variant and seed).
- :mod:`adaskip.ablation.stats`: aggregation over seeds, the paired comparison against baselines, the summary.

:mod:`adaskip.orchestration.cells` runs the cells as Ray tasks; ``pipelines/cells.py`` and ``pipelines/compare.py``
are the study's DVC stages (``studies/ablation/dvc.yaml``).
"""
