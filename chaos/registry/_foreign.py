"""A model artifact whose loading runs code: the payload of the registry-foreign-artifact fault.

``dumps`` pickles a working model inside a wrapper whose unpickling writes a marker file
(proof that the artifact's code ran, and in which process) and then hands back the model,
so a loader that accepts it serves it as if nothing happened. The wrapper is pickled *by
value* (cloudpickle): what runs is the code written into the artifact, not an import of
this module, as it would be for a model someone else built.

Example:
    >>> blob = dumps(model, "/tmp/selfheal-foreign-x/foreign-code-ran")
    >>> cloudpickle.loads(blob)   # writes the marker, returns ``model``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _plant(marker: str, model: Any) -> Any:
    """Runs at unpickling time, in whatever process loads the artifact."""
    Path(marker).write_text(f"foreign code ran in pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")
    return model


class ForeignModel:
    """Pickles as "call ``_plant(marker, model)``": loading it runs ``_plant``."""

    def __init__(self, model: Any, marker: str) -> None:
        self.model = model
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, Any]]:
        return (_plant, (self.marker, self.model))


def dumps(model: Any, marker: str) -> bytes:
    """The cloudpickle bytes of ``model`` wrapped so that loading them writes ``marker``."""
    import cloudpickle  # why local: only this fault needs it

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        return bytes(cloudpickle.dumps(ForeignModel(model, marker)))
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def write_artifact(template: Path, into: Path, model: Any, marker: str) -> Path:
    """A copy of the MLflow model folder ``template`` whose model file is ``dumps(model, marker)``.

    The MLmodel file says ``cloudpickle``, as MLflow writes it for
    ``log_model(..., serialization_format="cloudpickle")``. Returns ``into``.
    """
    import shutil

    import yaml  # why local: as cloudpickle above

    shutil.copytree(template, into)
    meta = yaml.safe_load((into / "MLmodel").read_text())
    (into / meta["flavors"]["sklearn"]["pickled_model"]).unlink()
    (into / "model.pkl").write_bytes(dumps(model, marker))
    meta["flavors"]["sklearn"].update(pickled_model="model.pkl", serialization_format="cloudpickle")
    meta["flavors"]["sklearn"].pop("skops_trusted_types", None)
    meta["flavors"]["python_function"]["model_path"] = "model.pkl"
    (into / "MLmodel").write_text(yaml.safe_dump(meta, sort_keys=False))
    return into
