"""Where trained models live and what they record, without importing TensorFlow.

:mod:`cryoem.siamese` re-exports these; the command line uses them directly
so that commands which only read a model's configuration start fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

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


def write_contract(model_dir: str | os.PathLike, *, proteins: Sequence[str], box_ratio: float,
                   symmetries: dict[str, str] | None = None,
                   training_command: str = "") -> dict[str, Any]:
    """Record what images a model expects (``contract.json`` beside the model).

    A model trained on several proteins has no single pixel size: what it
    needs is the same *framing* — images of ``image_size`` pixels whose box is
    ``box_ratio`` times the particle's diameter (as
    :func:`cryoem.volumes.resolve` makes them) — and the per-image
    standardisation that the model applies itself.  Returns the contract.
    """
    directory = Path(model_dir)
    config = json.loads((directory / CONFIG_FILE).read_text())
    contract = {
        "image_size": config["image_size"],
        "box_ratio": float(box_ratio),
        "normalisation": "none needed: the model standardises each image (zero mean, unit "
                         "variance) and downsamples it itself",
        "proteins": list(proteins),
        "symmetries": dict(symmetries or {}),
        "snr_range": config.get("snr_range"),
        "max_shift_px": config.get("max_shift"),
        "ctf_fraction": config.get("ctf_fraction") if config.get("ctf") else 0.0,
        "training_command": training_command,
    }
    (directory / CONTRACT_FILE).write_text(json.dumps(contract, indent=2))
    return contract
