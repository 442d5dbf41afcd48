"""cryoem.rotations against SciPy, hand-worked RELION cases and the metric axioms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.transform import Rotation

from cryoem import rotations as rot

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
quaternion = arrays(np.float64, 4, elements=finite).filter(lambda q: np.linalg.norm(q) > 1e-3)
quaternions = arrays(np.float64, (5, 4), elements=finite).filter(
    lambda q: np.all(np.linalg.norm(q, axis=1) > 1e-3))
angle = st.floats(-180, 180, allow_nan=False)


def scipy_rotation(q):
    return Rotation.from_quat(np.roll(rot.normalize(q), -1, axis=-1))  # SciPy is scalar-last


# ---------------------------------------------------------------- quaternions
@given(quaternions)
def test_matrix_matches_scipy(q):
    np.testing.assert_allclose(rot.quaternion_to_matrix(q), scipy_rotation(q).as_matrix(),
                               atol=1e-12)


@given(quaternions)
def test_matrix_to_quaternion_round_trip_and_double_cover(q):
    back = rot.matrix_to_quaternion(rot.quaternion_to_matrix(q))
    unit = rot.normalize(q)
    same_sign = np.linalg.norm(back - unit, axis=1)
    opposite = np.linalg.norm(back + unit, axis=1)
    assert np.all(np.minimum(same_sign, opposite) < 1e-9)
    assert np.all(back[:, 0] >= 0)
    np.testing.assert_allclose(rot.quaternion_to_matrix(-q), rot.quaternion_to_matrix(q),
                               atol=1e-12)


def test_matrix_to_quaternion_half_turns():
    half_turns = Rotation.from_rotvec(np.pi * np.eye(3)).as_matrix()
    q = rot.matrix_to_quaternion(half_turns)
    np.testing.assert_allclose(rot.quaternion_to_matrix(q), half_turns, atol=1e-12)


@given(quaternion, quaternion)
def test_multiply_is_matrix_product(q1, q2):
    product = rot.quaternion_to_matrix(rot.multiply(q1, q2))
    expected = rot.quaternion_to_matrix(q1) @ rot.quaternion_to_matrix(q2)
    np.testing.assert_allclose(product, expected, atol=1e-10)


def test_axis_angle():
    q = rot.axis_angle_to_quaternion([0, 0, 1], np.pi / 2)
    np.testing.assert_allclose(rot.quaternion_to_matrix(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        rot.quaternion_to_matrix(np.ones(3))
    with pytest.raises(ValueError):
        rot.matrix_to_quaternion(np.eye(4))
    with pytest.raises(ValueError):
        rot.normalize(np.zeros(4))
    with pytest.raises(ValueError):
        rot.euler_to_matrix([1.0, 2.0])


# ---------------------------------------------------------------- RELION angles
def relion_matrix(rot_deg, tilt_deg, psi_deg):
    """A = R_z(psi) R_y(tilt) R_z(rot), RELION's signs, written out as products."""
    def rz(a):
        c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b):
        c, s = np.cos(np.deg2rad(b)), np.sin(np.deg2rad(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    return rz(psi_deg) @ ry(tilt_deg) @ rz(rot_deg)


@pytest.mark.parametrize(
    "angles, matrix",
    [
        ((0, 0, 0), np.eye(3)),
        # tilt 90°: the microscope's z is the volume's x (projection along x).
        ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
        # rot 90°: volume x goes to microscope -y.
        ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
        # rot 90°, tilt 90°: projection along the volume's y axis.
        ((90, 90, 0), [[0, 0, -1], [-1, 0, 0], [0, 1, 0]]),
    ],
)
def test_relion_hand_worked_cases(angles, matrix):
    np.testing.assert_allclose(rot.euler_to_matrix(angles), matrix, atol=1e-12)


def test_tilt_90_views_along_x():
    q = rot.euler_to_quaternion([0, 90, 0])
    np.testing.assert_allclose(rot.viewing_direction(q), [1, 0, 0], atol=1e-12)


@given(angle, st.floats(0, 180), angle)
def test_euler_matches_relion_products_and_scipy(a, b, c):
    expected = relion_matrix(a, b, c)
    np.testing.assert_allclose(rot.euler_to_matrix([a, b, c]), expected, atol=1e-12)
    scipy = Rotation.from_euler("ZYZ", [a, b, c], degrees=True).inv().as_matrix()
    np.testing.assert_allclose(expected, scipy, atol=1e-12)


@given(quaternions)
def test_euler_round_trip(q):
    angles = rot.quaternion_to_euler(q)
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    np.testing.assert_allclose(rot.euler_to_matrix(angles), rot.quaternion_to_matrix(q),
                               atol=1e-7)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_euler_round_trip_at_the_poles(tilt):
    angles = np.array([[30.0, tilt, 50.0], [-120.0, tilt, 10.0]])
    matrices = rot.euler_to_matrix(angles)
    np.testing.assert_allclose(rot.euler_to_matrix(rot.matrix_to_euler(matrices)), matrices,
                               atol=1e-12)


# ---------------------------------------------------------------- distances
@given(quaternions, quaternions)
def test_distance_matches_scipy_and_trace_formula(q1, q2):
    d = rot.geodesic_distance(q1, q2)
    expected = (scipy_rotation(q1).inv() * scipy_rotation(q2)).magnitude()
    np.testing.assert_allclose(d, expected, atol=1e-7)
    r1, r2 = rot.quaternion_to_matrix(q1), rot.quaternion_to_matrix(q2)
    trace = np.trace(r1 @ np.swapaxes(r2, -1, -2), axis1=-2, axis2=-1)
    np.testing.assert_allclose(d, np.arccos(np.clip((trace - 1) / 2, -1, 1)), atol=1e-6)


@given(quaternion, quaternion, quaternion)
def test_metric_axioms(a, b, c):
    d_ab, d_ba = rot.geodesic_distance(a, b), rot.geodesic_distance(b, a)
    assert 0 <= d_ab <= np.pi + 1e-12
    assert d_ab == pytest.approx(d_ba, abs=1e-12)
    assert rot.geodesic_distance(a, a) == pytest.approx(0, abs=1e-7)
    assert rot.geodesic_distance(a, -a) == pytest.approx(0, abs=1e-7)  # double cover
    assert d_ab <= rot.geodesic_distance(a, c) + rot.geodesic_distance(c, b) + 1e-9


@given(quaternion, quaternion, quaternion)
def test_distance_is_bi_invariant(a, b, g):
    d = rot.geodesic_distance(a, b)
    assert rot.geodesic_distance(rot.multiply(g, a), rot.multiply(g, b)) == pytest.approx(
        d, abs=1e-7)
    assert rot.geodesic_distance(rot.multiply(a, g), rot.multiply(b, g)) == pytest.approx(
        d, abs=1e-7)


def test_distance_matrix_matches_pairwise():
    q = rot.sample_uniform(30, seed=3)
    matrix = rot.geodesic_distance_matrix(q)
    pairwise = rot.geodesic_distance(q[:, None], q[None, :])
    np.testing.assert_allclose(matrix, pairwise, atol=1e-6)
    assert matrix.shape == (30, 30)


# ---------------------------------------------------------------- TensorFlow
@pytest.fixture(scope="module")
def tf():
    import tensorflow  # a hard dependency: a broken install must fail, not skip

    return tensorflow


def test_tf_distance_matches_numpy(tf):
    q1, q2 = rot.sample_uniform(50, seed=1), rot.sample_uniform(50, seed=2)
    d = rot.geodesic_distance_tf(tf.constant(q1), tf.constant(q2)).numpy()
    np.testing.assert_allclose(d, rot.geodesic_distance(q1, q2), atol=1e-10)
    # Unnormalised inputs give the same distance.
    d_scaled = rot.geodesic_distance_tf(tf.constant(3 * q1), tf.constant(0.5 * q2)).numpy()
    np.testing.assert_allclose(d_scaled, d, atol=1e-10)


def test_tf_gradient_finite_at_zero_and_pi(tf):
    q = rot.sample_uniform(1, seed=4)[0]
    orthogonal = np.array([-q[1], q[0], -q[3], q[2]])  # <q, orthogonal> = 0: d = π
    for other, expected in ((q, 0.0), (orthogonal, np.pi), (-q, 0.0)):
        q1 = tf.Variable(q[None])
        with tf.GradientTape() as tape:
            d = rot.geodesic_distance_tf(q1, tf.constant(other[None]))
        grad = tape.gradient(d, q1).numpy()
        assert d.numpy()[0] == pytest.approx(expected, abs=1e-7)
        assert np.all(np.isfinite(grad))


def test_tf_gradient_matches_finite_differences(tf):
    q1, q2 = rot.sample_uniform(2, seed=5)
    var = tf.Variable(q1[None])
    with tf.GradientTape() as tape:
        d = rot.geodesic_distance_tf(var, tf.constant(q2[None]))
    grad = tape.gradient(d, var).numpy()[0]
    h = 1e-6
    numeric = [(rot.geodesic_distance(q1 + h * e, q2) - rot.geodesic_distance(q1 - h * e, q2))
               / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


# ---------------------------------------------------------------- point groups
@pytest.mark.parametrize("symbol, order", [("C1", 1), ("C2", 2), ("c5", 5), ("D2", 4),
                                           ("D7", 14), ("T", 12), ("O", 24), ("I", 60)])
def test_point_groups_are_closed_groups(symbol, order):
    group = rot.point_group(symbol)
    assert len(group) == order
    matrices = rot.quaternion_to_matrix(group)
    products = np.einsum("aij,bjk->abik", matrices, matrices).reshape(-1, 3, 3)
    distances = np.linalg.norm(products[:, None] - matrices[None], axis=(2, 3))
    assert np.all(distances.min(axis=1) < 1e-9)  # closed under products
    assert len({tuple(np.round(q, 9)) for q in group}) == order  # distinct


def test_dihedral_groups_contain_the_x_two_fold():
    flip_x = rot.axis_angle_to_quaternion([1, 0, 0], np.pi)
    assert np.min(rot.geodesic_distance(rot.point_group("D3"), flip_x)) < 1e-9
    four_fold_z = rot.axis_angle_to_quaternion([0, 0, 1], np.pi / 2)
    assert np.min(rot.geodesic_distance(rot.point_group("C4"), four_fold_z)) < 1e-9


def test_unknown_point_group():
    for bad in ("X", "C0", "Dx", ""):
        with pytest.raises(ValueError):
            rot.point_group(bad)


@settings(max_examples=30)
@given(quaternion, quaternion, st.sampled_from(["C3", "D2", "O"]))
def test_symmetric_distance(a, b, symbol):
    group = rot.point_group(symbol)
    plain = rot.geodesic_distance(a, b)
    sym = rot.symmetric_distance(a, b, symbol)
    assert sym <= plain + 1e-12
    for g in group:
        assert rot.symmetric_distance(a, rot.multiply(b, g), symbol) == pytest.approx(
            sym, abs=1e-7)
    assert rot.symmetric_distance(a, a, symbol) == pytest.approx(0, abs=1e-7)


def test_the_share_and_floor_of_distances_match_scipys_uniform_rotations():
    """Against 400,000 pairs of SciPy's uniform rotations (the angle of R_i R_jᵀ): the share of
    pairs within a horizon, and the L_DE of an estimate exact within it and equal beyond it to
    the mean distance there (what knows nothing beyond): 0.417 rad² at 0 (the README's constant
    guess), 0.30 at 1 rad, none at π."""
    a = Rotation.random(400_000, random_state=0)
    b = Rotation.random(400_000, random_state=1)
    d = (a * b.inv()).magnitude()
    for horizon in (0.0, 0.5, 1.0, 1.5, 2.5):
        far = d > horizon
        estimate = np.where(far, d[far].mean() if far.any() else 0.0, d)
        assert rot.uniform_distance_share(horizon) == pytest.approx(
            np.mean(~far), abs=3e-3)
        assert rot.l_de_floor(horizon) == pytest.approx(
            np.mean((estimate - d) ** 2), rel=1e-2, abs=1e-3)
    assert rot.l_de_floor(np.pi) == 0.0
    assert rot.l_de_floor(0.0) == pytest.approx(0.417, abs=1e-3)
