"""Landing zones and configs built from scikit-learn's bundled datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from sklearn import datasets

DATASETS = {
    "binary": (datasets.load_breast_cancer, "diagnosis"),
    "multiclass": (datasets.load_wine, "cultivar"),
    "regression": (datasets.load_diabetes, "progression"),
}


def dataset_frame(task: str) -> tuple[pd.DataFrame, str]:
    loader, target = DATASETS[task]
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns={"target": target})
    frame.columns = [
        str(c).replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "") for c in frame.columns
    ]
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True), target


def write_batches(frame: pd.DataFrame, landing: Path, parts: int, start: int = 0) -> list[Path]:
    landing.mkdir(parents=True, exist_ok=True)
    paths = []
    size = -(-len(frame) // parts)
    for i in range(parts):
        chunk = frame.iloc[i * size : (i + 1) * size]
        path = landing / f"batch-{start + i:05d}.parquet"
        chunk.to_parquet(path, index=False)
        paths.append(path)
    return paths


def write_config(tmp: Path, task: str, target: str, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "project": f"test-{task}",
        "model_name": f"test-{task}-model",
        "home": str(tmp / "home"),
        "lake": {"root": str(tmp / "lake")},
        "landing": {"path": str(tmp / "landing"), "format": "parquet"},
        "data": {"target": target, "task": task, "expectations": {"min_rows": 10, "max_duplicate_fraction": 0.2}},
        "trainer": {"params": {"max_iter": 30}, "seed": 3},
        "gate": {"minimum": 0.0, "tolerance": 0.02},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path = tmp / "selfheal.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
