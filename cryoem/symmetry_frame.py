"""A map's symmetry axes, found and turned onto the point group's standard ones.

A point group is imposed about fixed axes (:func:`cryoem.rotations.point_group`: ``Cn`` about
z, ``Dn`` with a two-fold along x, ``T``/``O``/``I`` in SciPy's orientation).  Orientations
estimated from particles alone live in a frame of their own, where the particle's axes point
anywhere: imposing the group there averages the map with turned copies of itself.  As RELION's
``relion_align_symmetry`` does before a symmetric refinement, :func:`find_symmetry_frame` looks
for the global rotation that makes the map most nearly invariant under the group, and
:func:`turn_orientations` moves the orientations with it, so that the map reconstructed from
them has its axes where the group expects them.  The axes must pass through the box centre
(a particle centred by its shifts, as refinement's are).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import alignment, rotations, scoring, volumes

__all__ = ["SymmetryFrame", "find_symmetry_frame", "generators", "symmetrize",
           "symmetry_score", "turn_orientations"]

FloatArray = NDArray[np.float64]


@dataclass
class SymmetryFrame:
    """The turn onto the group's axes and how symmetric the map is there.

    Attributes
    ----------
    turn
        A physical alignment whose transform ``a`` turns the map (:func:`cryoem.scoring.rotate_map`)
        and the orientations (:func:`turn_orientations`) into the group's frame.
    score
        Mean correlation, inside the particle's sphere, between the turned map and its copies
        turned by the group's generators (1: exactly symmetric).
    score_before
        The same for the map as it was (its axes where they happened to be).
    """

    turn: alignment.Alignment
    score: float
    score_before: float

    @property
    def angle(self) -> float:
        """How far the map was turned, radians."""
        return float(rotations.geodesic_distance(self.turn.transform, [1.0, 0.0, 0.0, 0.0]))


def generators(symmetry: str) -> FloatArray:
    """A few elements of the group whose products give all of it (quaternions ``(k, 4)``).

    Invariance under these is invariance under the group; one map turn per generator is
    what the search costs (not one per element: 60 for ``I``).  Found once per group (the
    search scores thousands of turns); the array returned is read-only.
    """
    return _generators(symmetry.strip().upper())


@functools.lru_cache(maxsize=None)
def _generators(symmetry: str) -> FloatArray:
    group = rotations.point_group(symmetry)
    chosen: list[FloatArray] = []
    reached = rotations.canonical(np.array([[1.0, 0.0, 0.0, 0.0]]))
    # Smallest turns first (the highest-order axes): two of them generate T, O and I.
    for element in group[np.argsort(-np.abs(group[:, 0]), kind="stable")][1:]:
        if _contains(reached, element):
            continue
        chosen.append(element)
        reached = _closure(np.array(chosen))
        if len(reached) == len(group):
            break
    found = np.array(chosen).reshape(-1, 4)
    found.setflags(write=False)
    return found


def _contains(elements: FloatArray, q: FloatArray) -> bool:
    return bool(np.any(np.abs(np.abs(elements @ q) - 1.0) < 1e-6))


def _closure(chosen: FloatArray) -> FloatArray:
    """Every product of the chosen elements (a finite group: until nothing new appears)."""
    elements = rotations.canonical(np.vstack([[1.0, 0.0, 0.0, 0.0], chosen]))
    while True:
        products = rotations.canonical(
            rotations.multiply(elements[:, None, :], elements[None, :, :]).reshape(-1, 4))
        new = [p for p in products if not _contains(elements, p)]
        if not new:
            return elements
        for p in new:
            if not _contains(elements, p):
                elements = np.vstack([elements, p])


def _turned(volume: NDArray, q: ArrayLike, order: int = 1) -> NDArray:
    return scoring.rotate_map(volume, alignment.Alignment(np.zeros(0), "physical",
                                                          np.asarray(q, dtype=np.float64)),
                              order=order)


def symmetry_score(volume: NDArray, symmetry: str, turn: ArrayLike | None = None) -> float:
    """How invariant ``volume`` (turned by the quaternion ``turn`` first) is under the group.

    The mean, over the group's generators ``g``, of ``⟨x, g·x⟩ / ‖x‖²`` inside the
    sphere, with ``x`` the (turned) map less its mean there.  The search's own score
    (:func:`find_symmetry_frame`) takes the norm of the unturned map instead: turning smooths
    noise, and a norm of the turned copy would favour turns that smooth most.
    """
    x = np.asarray(volume, dtype=np.float64) if turn is None else _turned(volume, turn)
    x, norm = _centred(x)
    return float(np.mean([np.sum(x * _turned(x, g)) / norm for g in generators(symmetry)]))


def _centred(volume: NDArray) -> tuple[FloatArray, float]:
    """The map less its mean inside the sphere, zero outside, and its squared norm."""
    mask = volumes.spherical_mask(volume.shape[0]) > 0.5
    x = np.asarray(volume, dtype=np.float64)
    x = np.where(mask, x - x[mask].mean(), 0.0)
    return x, float(np.sum(x * x)) or 1.0


def _invariance(centred: tuple[FloatArray, float], symmetry: str, turn: FloatArray) -> float:
    """The search's :func:`symmetry_score`: ``⟨x, (t⁻¹·g·t)·x⟩ / ‖x‖²``, the same inner
    product as ``⟨t·x, g·t·x⟩`` (a turn about the centre keeps the sphere) with one
    interpolation per generator instead of two, on a map centred once for all turns."""
    x, norm = centred
    return float(np.mean([np.sum(x * _turned(x, _about(g, turn))) / norm
                          for g in generators(symmetry)]))


def _about(g: FloatArray, t: FloatArray) -> FloatArray:
    """The group element ``g`` acting about the axes that the turn ``t`` moves onto the
    group's: ``t⁻¹·g·t``."""
    return rotations.multiply(rotations.conjugate(t), rotations.multiply(g, t))


def find_symmetry_frame(volume: ArrayLike, symmetry: str, *, candidates: int = 2000,
                        size: int = 24, polish: int = 3, seed: int = 0,
                        start: SymmetryFrame | None = None) -> SymmetryFrame:
    """The global rotation that brings ``volume``'s symmetry axes onto the group's.

    Scores ``candidates`` uniform rotations (:func:`symmetry_score`'s inner product, taken
    as ``⟨x, (t⁻¹·g·t)·x⟩``: one map turn per generator, not two, on the map Fourier-cropped
    to ``size`` voxels), then polishes the ``polish`` best by Nelder–Mead on the map at up to
    48 voxels; the frame's scores are :func:`symmetry_score`'s.  With ``start`` (a frame
    found before on a map like this one), only that frame's turn is polished: no search.  A
    search by hand: it is a few dozen lines on what :func:`cryoem.scoring.rotate_map` already
    does, where a package would add a dependency for one call.

    Raises
    ------
    ValueError
        For ``C1`` (nothing to find) or an unknown group.
    """
    from scipy import optimize

    if len(rotations.point_group(symmetry)) == 1:
        raise ValueError("C1 has no axes to find")
    data = np.asarray(volume, dtype=np.float64)
    if start is None:
        coarse = _centred(volumes.fourier_resample(data, min(size, data.shape[0])))
        grid = sampling_grid(candidates, seed)
        scores = np.array([_invariance(coarse, symmetry, q) for q in grid])
    else:
        grid, scores, polish = start.turn.transform[None, :], np.zeros(1), 1
    fine = volumes.fourier_resample(data, min(48, data.shape[0]))
    centred = _centred(fine)

    def loss(vector: FloatArray, start: FloatArray) -> float:
        return -_invariance(centred, symmetry, _moved(start, vector))

    best_q, best = grid[int(np.argmax(scores))], -np.inf
    for start in grid[np.argsort(-scores)[:polish]]:
        found = optimize.minimize(loss, np.zeros(3), args=(start,), method="Nelder-Mead",
                                  options={"initial_simplex": 0.08 * np.vstack(
                                      [np.zeros(3), np.eye(3)]), "xatol": 1e-3, "fatol": 1e-6})
        if -found.fun > best:
            best, best_q = -found.fun, _moved(start, found.x)
    turn = alignment.Alignment(np.zeros(0), "physical", rotations.canonical(best_q))
    return SymmetryFrame(turn, symmetry_score(fine, symmetry, turn.transform),
                         symmetry_score(fine, symmetry))


def symmetrize(volume: ArrayLike, symmetry: str, frame: SymmetryFrame) -> NDArray[np.float32]:
    """The mean of ``volume`` and its copies turned by the group about the axes ``frame``
    found in it (the map stays in its own frame: the axes are where the map has them).

    With ``t`` the frame's turn, each element ``g`` of the group acts on the map as
    ``t⁻¹·g·t`` (cubic splines, :func:`cryoem.scoring.rotate_map`; the identity's copy is the
    map itself).  What RELION's ``--sym`` does to each half's reference, for axes that were
    never moved onto the group's own.
    """
    data = np.asarray(volume, dtype=np.float64)
    t = frame.turn.transform
    total = np.zeros_like(data)
    group = rotations.point_group(symmetry)
    for g in group:
        identity = abs(abs(g[0]) - 1.0) < 1e-12
        total += data if identity else _turned(data, _about(g, t), order=3)
    return (total / len(group)).astype(np.float32)


def sampling_grid(candidates: int, seed: int) -> FloatArray:
    """The search's rotations: the identity, then ``candidates`` uniform ones."""
    return np.vstack([[1.0, 0.0, 0.0, 0.0],
                      rotations.sample_uniform(candidates, seed=np.random.default_rng(seed))])


def _moved(start: FloatArray, vector: FloatArray) -> FloatArray:
    return rotations.multiply(rotations.rotation_vector_to_quaternion(vector), start)


def turn_orientations(orientations: ArrayLike, frame: SymmetryFrame) -> FloatArray:
    """The orientations in the group's frame: a map reconstructed from them is the one
    :func:`cryoem.scoring.rotate_map` turns by ``frame.turn``."""
    return rotations.canonical(frame.turn.to_truth_frame(orientations))
