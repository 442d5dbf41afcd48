"""The pipeline's parameters: what a run folder records, and when a rerun may resume it.

:class:`PipelineConfig` holds every parameter of :func:`cryoem.pipeline.run`; its hash is
written to the run folder's ``pipeline.json``.  :func:`changed_parameters` decides whether a
folder holds the same run: field by field, so that a field added to the config after a folder
was made does not orphan it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["PipelineConfig", "changed_parameters", "describe_changes", "ROUTES", "ABSENT_MEANS"]

#: First-guess routes: learned (or other) distances, ab initio from the images alone, or a
#: map the user gives as the refinement's start.
ROUTES = ("distances", "ab-initio", "initial-map")
#: A field's metadata key: the value a run folder made before the field existed ran with
#: (when it is not the field's default), so that adding a field does not orphan old runs.
ABSENT_MEANS = "absent_means"


@dataclass
class PipelineConfig:
    """The parameters of a run (recorded in its folder; :func:`changed_parameters` guards
    resumption)."""

    volume: str = "4ake"
    n_projections: int = 5000
    test_size: int = 1650
    size: int = 64
    snr: float = float("inf")
    max_shift: float = 0.0
    # The first guess: "distances", "ab-initio" (images alone) or "initial-map"; None:
    # initial-map with initial_map, ab-initio with particles (the distances route would need a
    # model trained without them), else distances
    route: str | None = None
    initial_map: str | None = None  # an MRC map to start the refinement from (any box)
    estimator: str = "learned"
    model: str | None = None
    training: str = "rendered"  # "rendered": supervised on the true map; "fixed": the paper's
    particles: str | None = None  # a STAR file or dataset to start from instead of simulating
    datadir: str | None = None  # the folder a STAR file's stack paths are relative to
    reference_poses: bool = False  # score against the particles' reference poses
    symmetry: str | None = None  # the particles' point group, as the user knows it (C1)
    epochs: int | None = None  # at most; None: by SNR (pipeline_first_guess.training_epochs)
    # s; "auto": longer below SNR 1 (pipeline_first_guess.training_budget); None: epochs alone
    train_seconds: float | str | None = "auto"
    input_size: int | None = 32
    sigma2: float = 0.2
    steps: int = 2000
    refine: bool = True
    refine_iterations: int = 10
    # refinement's references masked around the particle (absent from runs before d063f9d,
    # which did not mask)
    mask_references: bool = field(default=True, metadata={ABSENT_MEANS: False})
    # Å: the gold-standard start's low-pass; None: the halves start from the first guess's
    # orientations (not independent: for tiny phantoms, whose 30 Å map is featureless)
    initial_resolution: float | None = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.route is None:
            self.route = ("initial-map" if self.initial_map is not None
                          else "ab-initio" if self.particles is not None else "distances")
        if (self.route == "initial-map") != (self.initial_map is not None):
            raise ValueError("the initial-map route and an initial map (--initial-map MAP) go "
                             "together")
        if self.route == "initial-map" and not (self.refine and self.initial_resolution):
            raise ValueError("a given map is the refinement's start: it needs the refinement "
                             "and an --initial-resolution to low-pass it to")
        if self.symmetry is not None and self.particles is None:
            raise ValueError("symmetry is for --particles; a simulation takes its volume's")
        if self.route not in ROUTES:
            raise ValueError(f"unknown route {self.route!r}; choose one of {', '.join(ROUTES)}")

    def digest(self) -> str:
        """A short hash of the parameters."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recorded(spec: Any, recorded: dict[str, Any]) -> Any:
    """A field's value in a run's record; a field it lacks reads as what that run did."""
    return (recorded[spec.name] if spec.name in recorded
            else spec.metadata.get(ABSENT_MEANS, spec.default))


def changed_parameters(config: PipelineConfig, recorded: dict[str, Any]) -> list[str]:
    """The fields on which ``config`` differs from a run folder's recorded config.

    A field the record lacks (one added after the folder was made) differs only when
    ``config`` departs from what that run did: the field's ``absent_means`` metadata, else its
    default.  Recorded keys the config no longer has are ignored.

    Parameters
    ----------
    config : PipelineConfig
        The parameters asked for now.
    recorded : dict
        The ``config`` of the folder's ``pipeline.json``.

    Returns
    -------
    list of str
        The differing field names, sorted.
    """
    return sorted(spec.name for spec in fields(config)
                  if _recorded(spec, recorded) != getattr(config, spec.name))


def describe_changes(config: PipelineConfig, recorded: dict[str, Any]) -> str:
    """``changed_parameters`` with each field's value in the run and the value asked now:
    ``"mask_references: False there, True now"``."""
    specs = {spec.name: spec for spec in fields(config)}
    return ", ".join(f"{name}: {_recorded(specs[name], recorded)!r} there, "
                     f"{getattr(config, name)!r} now"
                     for name in changed_parameters(config, recorded))
