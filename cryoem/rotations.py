"""Rotations: the one convention every phase of ``cryoem`` uses.

Convention (fixed here, used everywhere)
----------------------------------------
* A volume is a NumPy array indexed ``vol[z, y, x]`` (the MRC order) and an
  image is indexed ``img[y, x]``.  The origin of both is the voxel/pixel at
  index ``L // 2`` along every axis (the FFT centre).  Vectors are written in
  ``(x, y, z)`` order.
* ``R_i`` is the rotation that takes volume coordinates to the microscope
  frame of image ``i``, and the image is the line integral along the
  microscope's z axis of the rotated volume::

      p_i(u, v) = Proj_z(R_i x)(u, v) = ∫ x(R_iᵀ (u, v, w)) dw.

  The viewing direction of image ``i``, in volume coordinates, is the third
  row of ``R_i``.
* RELION's Euler angles ``(rot, tilt, psi)`` (degrees) give its matrix
  ``A = R_z(psi) · R_y(tilt) · R_z(rot)`` in RELION's sign convention
  (Heymann, Chagoyen & Belnap 2005; RELION's ``Euler_angles2matrix``), where
  ``R_z(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` and
  ``R_y(b) = [[cos b, 0, -sin b], [0, 1, 0], [sin b, 0, cos b]]``.  We take
  ``A = R_i``.  So ``rot = 0, tilt = 90°, psi = 0`` projects along the
  volume's x axis.  (In SciPy terms ``A = Rotation.from_euler("ZYZ",
  [rot, tilt, psi], degrees=True).inv()``.)
* Symmetry operators ``g`` of a point group act on the volume side:
  ``R_i → R_i · g`` leaves every image unchanged when ``x(g r) = x(r)``.
* Quaternions are unit 4-vectors stored **scalar first**, ``q = (w, x, y, z)``,
  and ``q`` and ``-q`` are the same rotation (the double cover).  The matrix
  of ``q`` rotates vectors actively: ``R(q) v = q v q*``.
* The geodesic distance on SO(3) is
  ``d_q(q1, q2) = 2·arccos(|<q1, q2>|) = arccos((tr(R1 R2ᵀ) − 1)/2)``,
  in radians, in ``[0, π]``.

Every function is batched: leading axes broadcast.  The quaternion algebra is
written by hand (a few lines each) so that the same formulas serve NumPy and
TensorFlow; ``scipy.spatial.transform.Rotation`` is the reference they are
tested against.

Example
-------
>>> import numpy as np
>>> from cryoem import rotations
>>> q = rotations.sample_uniform(3, seed=0)
>>> R = rotations.quaternion_to_matrix(q)
>>> angles = rotations.matrix_to_euler(R)          # RELION (rot, tilt, psi), degrees
>>> np.allclose(rotations.euler_to_matrix(angles), R, atol=1e-9)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = [
    "QUATERNION_ORDER",
    "canonical",
    "normalize",
    "multiply",
    "conjugate",
    "rotation_vector_to_quaternion",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "euler_to_matrix",
    "matrix_to_euler",
    "euler_to_quaternion",
    "quaternion_to_euler",
    "axis_angle_to_quaternion",
    "geodesic_distance",
    "geodesic_distance_matrix",
    "geodesic_distance_tf",
    "uniform_distance_share",
    "l_de_floor",
    "sample_uniform",
    "viewing_direction",
    "point_group",
    "symmetric_distance",
    "symmetric_distance_matrix",
]

#: Order of the components of a quaternion in every array of this package.
QUATERNION_ORDER = ("w", "x", "y", "z")

FloatArray = NDArray[np.float64]


# ----------------------------------------------------------------------------
# Quaternion algebra
# ----------------------------------------------------------------------------
def normalize(q: ArrayLike) -> FloatArray:
    """Scale quaternions ``(..., 4)`` to unit norm.

    Raises
    ------
    ValueError
        If the last axis is not of length 4 or a quaternion is zero.
    """
    q = _as_quaternions(q)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("cannot normalise a zero quaternion")
    return q / norm


def canonical(q: ArrayLike) -> FloatArray:
    """Unit quaternions with a non-negative scalar part (one of ``±q``)."""
    q = normalize(q)
    sign = np.where(q[..., :1] < 0, -1.0, 1.0)
    return q * sign


def conjugate(q: ArrayLike) -> FloatArray:
    """Quaternion conjugate ``(w, -x, -y, -z)``: the inverse rotation."""
    q = _as_quaternions(q)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def multiply(q1: ArrayLike, q2: ArrayLike) -> FloatArray:
    """Hamilton product ``q1 · q2`` (apply ``q2`` first, then ``q1``)."""
    q1 = _as_quaternions(q1)
    q2 = _as_quaternions(q2)
    w1, v1 = q1[..., :1], q1[..., 1:]
    w2, v2 = q2[..., :1], q2[..., 1:]
    w = w1 * w2 - np.sum(v1 * v2, axis=-1, keepdims=True)
    v = w1 * v2 + w2 * v1 + np.cross(v1, v2)
    return np.concatenate([w, v], axis=-1)


def axis_angle_to_quaternion(axis: ArrayLike, angle: ArrayLike) -> FloatArray:
    """Quaternion of a rotation by ``angle`` (radians) about ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.asarray(angle, dtype=np.float64)
    shape = np.broadcast_shapes(axis.shape[:-1], angle.shape)
    half = 0.5 * np.broadcast_to(angle, shape)[..., None]
    axis = np.broadcast_to(axis, shape + (3,))
    return np.concatenate([np.cos(half), np.sin(half) * axis], axis=-1)


def rotation_vector_to_quaternion(vector: ArrayLike) -> FloatArray:
    """Quaternion of the rotation by ``|vector|`` radians about ``vector`` (the identity for 0)."""
    vector = np.asarray(vector, dtype=np.float64)
    angle = float(np.linalg.norm(vector))
    axis = vector / angle if angle > 0 else np.array([0.0, 0.0, 1.0])
    return axis_angle_to_quaternion(axis, angle)


def quaternion_to_matrix(q: ArrayLike) -> FloatArray:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)``.

    The quaternions need not be normalised: ``q`` and ``c·q`` give the same
    matrix for any ``c ≠ 0``.
    """
    w, x, y, z = np.moveaxis(normalize(q), -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(matrix: ArrayLike) -> FloatArray:
    """Canonical unit quaternions (``w ≥ 0``) of rotation matrices ``(..., 3, 3)``.

    Uses the numerically stable branch (largest of ``w, x, y, z``) for each
    matrix, so it is accurate for every rotation including half-turns.

    Raises
    ------
    ValueError
        If the input is not a stack of 3×3 matrices.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got shape {m.shape}")
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four estimates of 4·(component)², one per candidate largest component.
    squares = np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
        axis=-1,
    )
    best = np.argmax(squares, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(squares, best[..., None], -1)[..., 0], 1e-300))
    d_zy = m[..., 2, 1] - m[..., 1, 2]
    d_xz = m[..., 0, 2] - m[..., 2, 0]
    d_yx = m[..., 1, 0] - m[..., 0, 1]
    s_xy = m[..., 1, 0] + m[..., 0, 1]
    s_xz = m[..., 0, 2] + m[..., 2, 0]
    s_yz = m[..., 2, 1] + m[..., 1, 2]
    candidates = np.stack(
        [
            np.stack([s * s, d_zy, d_xz, d_yx], -1),
            np.stack([d_zy, s * s, s_xy, s_xz], -1),
            np.stack([d_xz, s_xy, s * s, s_yz], -1),
            np.stack([d_yx, s_xz, s_yz, s * s], -1),
        ],
        axis=-2,
    )
    q = np.take_along_axis(candidates, best[..., None, None], -2)[..., 0, :] / (2 * s[..., None])
    return canonical(q)


# ----------------------------------------------------------------------------
# RELION Euler angles (rot, tilt, psi), ZYZ, degrees
# ----------------------------------------------------------------------------
def euler_to_matrix(angles: ArrayLike, degrees: bool = True) -> FloatArray:
    """RELION's matrix ``A = R_z(psi) R_y(tilt) R_z(rot)`` from ``(..., 3)`` angles.

    Parameters
    ----------
    angles
        ``(rot, tilt, psi)`` along the last axis, as in RELION's
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi``.
    degrees
        Whether the angles are in degrees (RELION's unit) or radians.
    """
    a = np.asarray(angles, dtype=np.float64)
    if a.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) Euler angles, got shape {a.shape}")
    if degrees:
        a = np.deg2rad(a)
    ca, cb, cg = np.cos(a[..., 0]), np.cos(a[..., 1]), np.cos(a[..., 2])
    sa, sb, sg = np.sin(a[..., 0]), np.sin(a[..., 1]), np.sin(a[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler(matrix: ArrayLike, degrees: bool = True) -> FloatArray:
    """RELION ``(rot, tilt, psi)`` of rotation matrices, with ``tilt ∈ [0, 180°]``.

    At the gimbal-lock poles (``tilt`` = 0 or 180°) only ``rot ± psi`` is
    defined; ``rot`` is then set to 0.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) matrices, got shape {m.shape}")
    sin_tilt = np.hypot(m[..., 0, 2], m[..., 1, 2])
    tilt = np.arctan2(sin_tilt, m[..., 2, 2])
    regular = sin_tilt > 1e-9
    rot = np.where(regular, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi_regular = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    # tilt = 0: A = R_z(rot + psi); tilt = π: A = R_z(psi) R_y(π) R_z(rot).
    psi_pole = np.where(
        m[..., 2, 2] > 0,
        np.arctan2(-m[..., 1, 0], m[..., 0, 0]),
        np.arctan2(m[..., 1, 0], -m[..., 0, 0]),
    )
    psi = np.where(regular, psi_regular, psi_pole)
    angles = np.stack([rot, tilt, psi], axis=-1)
    return np.rad2deg(angles) if degrees else angles


def euler_to_quaternion(angles: ArrayLike, degrees: bool = True) -> FloatArray:
    """Canonical quaternions of RELION ``(rot, tilt, psi)`` angles."""
    return matrix_to_quaternion(euler_to_matrix(angles, degrees=degrees))


def quaternion_to_euler(q: ArrayLike, degrees: bool = True) -> FloatArray:
    """RELION ``(rot, tilt, psi)`` angles of quaternions."""
    return matrix_to_euler(quaternion_to_matrix(q), degrees=degrees)


def viewing_direction(q: ArrayLike) -> FloatArray:
    """Unit vectors ``(..., 3)``: the projection direction in volume coordinates.

    This is the third row of ``R(q)``: the volume axis that ends up along the
    microscope's z.
    """
    return quaternion_to_matrix(q)[..., 2, :]


# ----------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------
def geodesic_distance(q1: ArrayLike, q2: ArrayLike) -> FloatArray:
    """Geodesic distance ``2·arccos(|<q1, q2>|)`` on SO(3), in radians.

    Computed as ``2·atan2(|v|, |w|)`` with ``(w, v) = q1* q2``, which equals the
    arccos form for unit quaternions but keeps full precision near 0 and π and
    ignores the quaternions' norms.  Broadcasts over leading axes.
    """
    product = multiply(conjugate(q1), q2)
    return 2.0 * np.arctan2(np.linalg.norm(product[..., 1:], axis=-1), np.abs(product[..., 0]))


def geodesic_distance_matrix(q1: ArrayLike, q2: ArrayLike | None = None) -> FloatArray:
    """All pairwise distances ``(N, M)`` between ``q1 (N, 4)`` and ``q2 (M, 4)``.

    ``q2`` defaults to ``q1``.  Uses ``2·arccos(|<q1,q2>|)`` on normalised inputs
    (a matrix product: fast for large N), clipped to ``[0, π]``.
    """
    a = normalize(q1)
    b = a if q2 is None else normalize(q2)
    cosines = np.clip(np.abs(a @ b.T), 0.0, 1.0)
    return 2.0 * np.arccos(cosines)


def _tail_moments(horizon: float) -> tuple[float, float, float]:
    """Mass, first and second moment of ``d ≥ horizon`` under the density ``(1 − cos d)/π``
    of the distance between two uniform orientations (closed forms of three integrals)."""
    def mass(w: float) -> float:
        return w - np.sin(w)

    def first(w: float) -> float:
        return w * w / 2 - w * np.sin(w) - np.cos(w)

    def second(w: float) -> float:
        return w ** 3 / 3 - w * w * np.sin(w) - 2 * w * np.cos(w) + 2 * np.sin(w)

    t = float(np.clip(horizon, 0.0, np.pi))
    return tuple((f(np.pi) - f(t)) / np.pi for f in (mass, first, second))  # type: ignore


def uniform_distance_share(horizon: float) -> float:
    """The share of pairs of uniform orientations whose distance ``2·arccos|<q_i, q_j>|`` (the
    angle of ``R_i R_jᵀ``, density ``(1 − cos d)/π`` on ``[0, π]``) is at most ``horizon``."""
    return 1.0 - _tail_moments(horizon)[0]


def l_de_floor(horizon: float) -> float:
    """The smallest ``L_DE`` (rad², over pairs of uniform orientations) of a distance estimate
    that is exact up to ``horizon`` rad and knows nothing beyond it (where the best it can
    give is the mean distance beyond the horizon): 0 at ``π``, the variance of the distance
    (0.417 rad²) at 0."""
    mass, first, second = _tail_moments(horizon)
    return 0.0 if mass <= 0 else max(0.0, float(second - first * first / mass))


def geodesic_distance_tf(q1: Any, q2: Any) -> "tf.Tensor":
    """Differentiable geodesic distance in TensorFlow (radians).

    Same value as :func:`geodesic_distance`.  Written as ``2·atan2(|v|, |w|)``
    with ``(w, v) = q1* q2`` and a norm whose gradient is defined as zero at
    ``v = 0``, so gradients stay finite at ``d = 0`` and at ``d = π`` (where
    ``arccos`` has an infinite slope).  The inputs need not be normalised, so
    an optimiser can work on raw 4-vectors.
    """
    import tensorflow as tf  # imported here: the rest of the package runs without it

    q1 = tf.convert_to_tensor(q1)
    q2 = tf.convert_to_tensor(q2, dtype=q1.dtype)
    w1, v1 = q1[..., :1], q1[..., 1:]
    w2, v2 = q2[..., :1], q2[..., 1:]
    w = tf.reduce_sum(q1 * q2, axis=-1)
    v = w1 * v2 - w2 * v1 - tf.linalg.cross(v1, v2)
    squared = tf.reduce_sum(v * v, axis=-1)
    positive = squared > 0
    # The double `where` keeps NaN out of the gradient of sqrt at 0.
    norm = tf.where(positive, tf.sqrt(tf.where(positive, squared, tf.ones_like(squared))), 0.0)
    return 2.0 * tf.atan2(norm, tf.abs(w))


# ----------------------------------------------------------------------------
# Uniform sampling (other distributions: :mod:`cryoem.sampling`)
# ----------------------------------------------------------------------------
def sample_uniform(n: int, seed: int | np.random.Generator | None = None) -> FloatArray:
    """``n`` canonical quaternions uniform on SO(3) (Haar measure).

    A normalised 4D standard Gaussian is uniform on S³, and S³ → SO(3) maps
    the uniform measure to the Haar measure.
    """
    rng = np.random.default_rng(seed)
    return canonical(rng.standard_normal((n, 4)))


# ----------------------------------------------------------------------------
# Point groups
# ----------------------------------------------------------------------------
def point_group(symbol: str) -> FloatArray:
    """The rotations of a point group as canonical quaternions ``(|G|, 4)``.

    ``symbol`` is one of ``C<n>``, ``D<n>``, ``T``, ``O``, ``I`` (case
    insensitive; ``C1`` is the trivial group).  ``Cn`` turns about z; ``Dn``
    adds two-fold axes in the xy plane, one along x (RELION's convention);
    ``T``, ``O`` and ``I`` are in SciPy's standard orientation.
    """
    from scipy.spatial.transform import Rotation

    name = symbol.strip().upper()
    if name[:1] in ("C", "D") and name[1:].isdigit() and int(name[1:]) >= 1:
        order = int(name[1:])
        turns = axis_angle_to_quaternion([0.0, 0.0, 1.0], 2 * np.pi * np.arange(order) / order)
        if name[0] == "C":
            return canonical(turns)
        flip = axis_angle_to_quaternion([1.0, 0.0, 0.0], np.pi)
        return canonical(np.concatenate([turns, multiply(turns, flip)]))
    if name in ("T", "O", "I"):
        quats = Rotation.create_group(name).as_quat()  # SciPy stores scalar last
        return canonical(np.roll(quats, 1, axis=-1))
    raise ValueError(f"unknown point group {symbol!r}: use C<n>, D<n>, T, O or I")


def symmetric_distance(q1: ArrayLike, q2: ArrayLike, symmetry: str | ArrayLike = "C1") -> FloatArray:
    """Geodesic distance up to the point group: ``min_g d(q1, q2·g)``.

    ``symmetry`` is a group symbol or the ``(|G|, 4)`` quaternions of a group.
    For a symmetric volume, ``q2`` and ``q2·g`` give the same image.
    """
    group = point_group(symmetry) if isinstance(symmetry, str) else normalize(symmetry)
    q1 = _as_quaternions(q1)
    q2 = _as_quaternions(q2)
    moved = multiply(q2[..., None, :], group)  # (..., |G|, 4)
    return np.min(geodesic_distance(q1[..., None, :], moved), axis=-1)


def symmetric_distance_matrix(q: ArrayLike, symmetry: str | ArrayLike = "C1") -> FloatArray:
    """All pairwise ``min_g d(q_i, q_j·g)`` as an ``(N, N)`` matrix (symmetric, zero diagonal)."""
    group = point_group(symmetry) if isinstance(symmetry, str) else normalize(symmetry)
    unit = normalize(q)
    best = np.zeros((len(unit), len(unit)))
    for g in group:  # |<q_i, q_j g>|, largest over the group
        best = np.maximum(best, np.abs(unit @ multiply(unit, g).T))
    best = np.maximum(best, best.T)
    d = 2.0 * np.arccos(np.clip(best, 0.0, 1.0))
    np.fill_diagonal(d, 0.0)
    return d


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------
def _as_quaternions(q: ArrayLike) -> FloatArray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"expected quaternions of shape (..., 4), got {q.shape}")
    return q
