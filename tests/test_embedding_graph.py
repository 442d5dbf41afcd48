"""Learned distances at scale: the k-NN graph, pairs, sparse recovery and files against references.

References are independent: a brute-force NumPy ``2·arccos|cos|`` matrix, and true
orientations as features (for unit quaternions ``2·arccos|<q_i, q_j>|`` is exactly the
geodesic distance, so quaternions are an exact embedding).
"""

import importlib
import tracemalloc

import h5py
import numpy as np
import pytest

from cryoem import alignment, cli, datasets, distance, embedding_graph, recovery, rotations, volumes

EPSILON = 1e-6  # the cosine clip of the learned distance (checked via LearnedDistance.matrix)


def brute_force(features):
    """Reference: the dense learned-distance matrix, self-distances set to infinity."""
    u = features / np.linalg.norm(features, axis=1, keepdims=True)
    d = 2 * np.arccos(np.clip(np.abs(u @ u.T), EPSILON, 1 - EPSILON))
    np.fill_diagonal(d, np.inf)
    return d


def signed_features(n, dim, seed):
    """Random features where every fourth point is a slightly moved, negated copy of another."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, dim)) * rng.uniform(0.5, 2, (n, 1))
    twins = np.arange(0, n, 4)
    f[twins + 1] = -1.3 * f[twins] + 0.01 * rng.standard_normal((len(twins), dim))
    return f, twins


def test_neighbour_graph_equals_brute_force_including_negated_neighbours():
    f, twins = signed_features(400, 16, seed=0)
    k = 7
    rows, cols, d = embedding_graph.neighbour_graph(f, k, chunk=150)
    reference = brute_force(f)
    assert np.array_equal(rows, np.repeat(np.arange(400), k))
    np.testing.assert_allclose(d.reshape(400, k), np.sort(reference, axis=1)[:, :k], atol=1e-9)
    np.testing.assert_allclose(d, reference[rows, cols], atol=1e-9)
    cols = cols.reshape(400, k)
    assert np.all(cols[twins, 0] == twins + 1) and np.all(cols[twins + 1, 0] == twins)
    assert np.all(cols != np.arange(400)[:, None])
    assert all(len(set(row)) == k for row in cols)
    # The sign is what a plain (signed) cosine search gets wrong for the twins.
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    assert np.all(np.argsort(-(u @ u.T), axis=1)[twins, 1] != twins + 1)


def test_neighbour_graph_edge_cases():
    # All pairs orthogonal: both copies of every point tie at ‖·‖² = 2 (repeats fall back).
    rows, cols, d = embedding_graph.neighbour_graph(np.eye(6), 3)
    cols = cols.reshape(6, 3)
    assert all(len(set(row)) == 3 and i not in row for i, row in enumerate(cols))
    np.testing.assert_allclose(d, 2 * np.arccos(EPSILON))
    few = np.random.default_rng(1).normal(size=(4, 3))
    assert len(embedding_graph.neighbour_graph(few, 10)[0]) == 4 * 3  # k is capped at N − 1
    with pytest.raises(ValueError):
        embedding_graph.neighbour_graph(np.zeros(5), 2)
    with pytest.raises(ValueError):
        embedding_graph.neighbour_graph(np.eye(3), -1)


def test_pairs_and_their_distances_equal_the_dense_matrix():
    f, _ = signed_features(300, 12, seed=2)
    graph = embedding_graph.neighbour_graph(f, 5)
    rows, cols, d = embedding_graph.embedding_pairs(f, k=5, random_per_point=4, seed=3)
    reference = brute_force(f)
    np.testing.assert_allclose(d, reference[rows, cols], atol=1e-12)
    assert np.all(rows < cols)
    assert len(np.unique(rows * 300 + cols)) == len(rows)
    pairs = set(zip(rows.tolist(), cols.tolist()))
    assert {(min(a, b), max(a, b)) for a, b in zip(*graph[:2])} <= pairs
    assert 300 * 5 / 2 < len(rows) <= 300 * (5 + 4)
    # The same numbers as LearnedDistance's dense matrix and pairs (the network stubbed out:
    # image i, filled with the value i, has the raw features f[i]).
    estimator = object.__new__(distance.LearnedDistance)
    estimator.turns = 1  # the graph embeds each image once
    estimator.config = {"image_size": 2}
    estimator.batch_size = 64

    class Network:
        @staticmethod
        def predict(images, batch_size, verbose):
            return f[images[:, 0, 0].astype(int)]

    estimator.members = [Network()]  # one network, not an ensemble
    images = np.broadcast_to(np.arange(300.0)[:, None, None], (300, 2, 2))
    data = datasets.Dataset(projections=images, orientations=np.zeros((300, 4)), shifts=None,
                            volume=None, split={}, attrs={})
    dense = estimator.matrix(data)
    np.testing.assert_allclose(d, dense[rows, cols], atol=1e-12)
    np.testing.assert_allclose(embedding_graph.pair_distances(f, [0, 5, 7], [0, 9, 2]),
                               [0.0, dense[5, 9], dense[7, 2]], atol=1e-12)


def test_recovery_from_true_orientations_as_embeddings_in_bounded_memory(monkeypatch):
    n, landmarks = 2000, 100
    q = rotations.sample_uniform(n, seed=4)
    signs = np.random.default_rng(5).choice([-1.0, 1.0], (n, 1))
    features = q * signs  # an exact embedding, with the network's sign ambiguity
    shapes = []
    spectral = recovery.spectral_initialization
    monkeypatch.setattr(recovery, "spectral_initialization",
                        lambda d, **kw: shapes.append(np.shape(d)) or spectral(d, **kw))
    for module in ("sklearn.neighbors", "tensorflow"):  # loaded before measuring
        importlib.import_module(module)

    tracemalloc.start()
    try:
        result = embedding_graph.recover_from_embeddings(features, k=8, random_per_point=8,
                                                         landmarks=landmarks, steps=40)
        peak = tracemalloc.get_traced_memory()[1]  # NumPy's arrays and Python's objects
    finally:
        tracemalloc.stop()
    assert shapes == [(landmarks, landmarks)]
    assert peak < 8 * n * n / 2  # less than half of one dense N × N float64 matrix
    assert result.init_residual < 1e-8
    assert alignment.align_o4(result.quaternions, q).mean < 1e-3


def test_embeddings_file_round_trip(tmp_path):
    f, _ = signed_features(50, 8, seed=6)
    rows, cols, d = embedding_graph.neighbour_graph(f, 4)
    path = embedding_graph.save_embeddings(tmp_path / "e.h5", f, np.arange(100, 150), rows, cols,
                                           d, estimator="learned", skipped=None)
    loaded = embedding_graph.load_embeddings(path)
    np.testing.assert_allclose(loaded.features, f.astype(np.float32))
    assert np.array_equal(loaded.indices, np.arange(100, 150))
    assert np.array_equal(loaded.graph[0], rows) and np.array_equal(loaded.graph[1], cols)
    np.testing.assert_array_equal(loaded.distances, d)
    assert loaded.attrs["estimator"] == "learned" and "skipped" not in loaded.attrs
    with h5py.File(path) as h:
        assert h["features"].chunks is not None and h["graph/cols"].chunks is not None
    matrix = distance.save_matrix(tmp_path / "m.h5", np.zeros((3, 3)), np.arange(3))
    assert embedding_graph.is_embeddings_file(path)
    assert not embedding_graph.is_embeddings_file(matrix)
    assert not embedding_graph.is_embeddings_file(tmp_path / "missing.h5")
    with pytest.raises(ValueError):
        embedding_graph.load_embeddings(matrix)
    with pytest.raises(ValueError):
        embedding_graph.save_embeddings(tmp_path / "x.h5", f, np.arange(3), rows, cols, d)


@pytest.mark.filterwarnings("ignore:.*box-to-particle ratio")
def test_cli_round_trip_distances_to_recover(tmp_path, capsys):
    data = datasets.generate(volumes.resolve("phantom", 32), 60, tmp_path / "d.h5", seed=3)
    dense, sparse, out = tmp_path / "dense.h5", tmp_path / "graph.h5", tmp_path / "o.h5"
    common = [str(data), "--model", "pretrained", "--split", "all"]
    # the graph embeds each image once: its distances are the dense ones without test-time turns
    assert cli.main(["distances", *common, "--test-turns", "1", "--out", str(dense)]) == 0
    assert cli.main(["distances", *common, "--neighbours", "6", "--out", str(sparse)]) == 0
    assert "6-nearest-neighbour graph" in capsys.readouterr().out
    matrix, indices, _ = distance.load_matrix(dense)
    graph = embedding_graph.load_embeddings(sparse)
    assert np.array_equal(graph.indices, indices) and graph.attrs["l_de_neighbours"] >= 0
    np.testing.assert_allclose(graph.distances, matrix[graph.rows, graph.cols], atol=1e-5)
    assert cli.main(["distances", str(data), "--estimator", "exact", "--neighbours", "6",
                     "--out", str(tmp_path / "x.h5")]) == 2
    assert "needs an embedding" in capsys.readouterr().err
    assert cli.main(["recover", str(data), "--distances", str(sparse), "--landmarks", "30",
                     "--random-per-point", "5", "--steps", "20", "--no-resolve-frame",
                     "--quiet", "--out", str(out)]) == 0
    q, recovered, attrs = recovery.load_orientations(out)
    assert q.shape == (60, 4) and np.array_equal(recovered, indices)
    assert np.isfinite(attrs["e_or_o4_rad"]) and np.isfinite(attrs["l_or"])
