"""Ensembles of Siamese networks: members trained alike but for their seeds, distances averaged.

At SNR 1/16 most of a learned distance's error belongs to each image, not to each pair: an image
whose embedding is off moves all its distances together, and no weighting of pairs averages
that away.  Networks trained from other initialisations on other renders err differently on the
same image, so the mean of their distances (:class:`cryoem.distance.LearnedDistance` averages
over every member and test-time turn) might average it away; :func:`train_ensemble` splits one
budget (epochs and seconds) among the members.  Measured at SNR 1/16 on a 2-core CPU, it lost:
two networks of 450 s each gave a first guess of 0.507 rad (O(4)) where one of 900 s gave 0.342
(``benchmarks/distance_ablation.py --levers cosine_wide cosine_wide_x2``, 486299d): the
network's error falls faster with epochs than averaging removes it, so the pipeline trains one.
Kept for budgets where each member converges, and so that the lever stays reproducible.

An ensemble's folder holds ``config.json`` (the first member's, with ``members``: their
number) and ``members/0``, ``members/1``, … each an ordinary model folder
(:func:`cryoem.training.train`).  :func:`member_directories` lists the model folders of any
model, single or ensemble.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ._models import CONFIG_FILE, MODEL_FILE, model_directory, read_config

__all__ = ["MEMBERS_DIR", "member_directories", "member_config", "train_ensemble"]

MEMBERS_DIR = "members"
#: Beside a finished member: the settings it was trained with (a rerun keeps it when they match).
DONE_FILE = "member_done.json"


def member_directories(model: str | os.PathLike) -> list[Path]:
    """The model folders of a model: itself, or each member of an ensemble in order.

    Raises
    ------
    FileNotFoundError
        When the folder holds no trained model, or an ensemble lacks one of its members.
    """
    directory = model_directory(model)
    members = int(read_config(directory).get("members", 1))
    if members <= 1:
        return [directory]
    folders = [directory / MEMBERS_DIR / str(k) for k in range(members)]
    missing = [str(f) for f in folders if not (f / MODEL_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: the ensemble of {members} lacks the trained "
                                f"member(s) {', '.join(missing)}")
    return folders


def member_config(config: Any, index: int, members: int) -> Any:
    """Member ``index``'s :class:`~cryoem.training.TrainingConfig`: seed ``seed + index``, and
    a ``members``-th of the epochs (rounded up) and of the wall-clock budget."""
    budget = None if config.max_seconds is None else config.max_seconds / members
    return replace(config, seed=config.seed + index, epochs=math.ceil(config.epochs / members),
                   max_seconds=budget)


def train_ensemble(datasets: Sequence[Any], out_dir: str | os.PathLike, config: Any,
                   members: int, *, verbose: int | str = "auto",
                   overwrite: bool = False) -> list[dict[str, list[float]]]:
    """Train ``members`` networks that share one budget, and save them as one model.

    With ``members`` 1 this is :func:`cryoem.training.train`.  Otherwise member ``k`` trains in
    ``out_dir/members/k`` with :func:`member_config`; a member already finished with the same
    settings is kept (a rerun after an interruption resumes where it stopped: finished members
    are kept, an interrupted one resumes from its last epoch; ``overwrite`` trains every member
    again).  ``config.json`` is written last, so a folder without it holds no usable ensemble.

    Returns each member's Keras history of this call (empty for a member kept).
    """
    from . import training

    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}")
    out = Path(out_dir)
    if members == 1:
        return [training.train(datasets, out, config, verbose=verbose, overwrite=overwrite)]
    (out / CONFIG_FILE).unlink(missing_ok=True)  # written again once every member is done
    histories = []
    for k in range(members):
        settings = member_config(config, k, members)
        folder = out / MEMBERS_DIR / str(k)
        done = folder / DONE_FILE
        expected = settings.to_json()  # before train fills in the data's fields
        if not overwrite and done.is_file() and done.read_text() == expected:
            histories.append({})
            continue
        done.unlink(missing_ok=True)
        histories.append(training.train(datasets, folder, settings, verbose=verbose,
                                        overwrite=not (folder / "backup").exists()))
        done.write_text(expected)
    record = json.loads((out / MEMBERS_DIR / "0" / CONFIG_FILE).read_text())
    record.update(members=members, epochs=config.epochs, max_seconds=config.max_seconds,
                  seed=config.seed)
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2))
    return histories
