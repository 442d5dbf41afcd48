"""Where trained models live and what they record, without importing TensorFlow.

:mod:`cryoem.siamese` re-exports these; the command line uses them directly
so that commands which only read a model's configuration start fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
CONTRACT_FILE = "contract.json"
#: ``--model pretrained`` names the general model shipped in the package.
PRETRAINED = "pretrained"
PRETRAINED_DIR = Path(__file__).resolve().parent / "data" / "models" / PRETRAINED


def model_directory(model: str | os.PathLike) -> Path:
    """The folder of a model: ``"pretrained"`` is the general model shipped in the package."""
    if str(model) == PRETRAINED:
        if not (PRETRAINED_DIR / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"this installation has no pretrained model ({PRETRAINED_DIR}); train one with "
                "`python benchmarks/generalisation.py --stages train --ship`")
        return PRETRAINED_DIR
    return Path(model)


def read_config(model: str | os.PathLike) -> dict[str, Any]:
    """A model's training configuration (``config.json``)."""
    path = model_directory(model) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path.parent}: train one with `cryoem train`")
    return json.loads(path.read_text())


def read_contract(model: str | os.PathLike) -> dict[str, Any] | None:
    """The input contract of a model (``None`` for models trained without one)."""
    path = model_directory(model) / CONTRACT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
