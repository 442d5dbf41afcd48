"""The Siamese network under each installed Keras backend (TensorFlow, JAX, PyTorch).

Each backend runs in its own interpreter (``KERAS_BACKEND`` is read when Keras
is first imported): one training step, whose loss must be finite and equal the
uniform-weighted L_DE computed with NumPy from the network's distances before
the step, and after which every weight must have changed (also for the polar front end
with the horizon loss, and for the confidence head with its likelihood); and the shipped
pretrained model, which must give the features it gives in this process.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoem import siamese  # noqa: E402 - a hard dependency: a broken import must fail

keras = siamese.keras

ROOT = Path(__file__).resolve().parents[1]

#: Keras backend → the package it needs.
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

#: Run in every backend's interpreter and in this one (the reference).
FEATURES = r"""
def pretrained_features(siamese):
    # The shipped model's features of four seeded noise images (it downsamples 64 -> 32 px).
    embedding, config = siamese.load_embedding("pretrained")
    size = config["image_size"]
    images = np.random.default_rng(7).standard_normal((4, size, size)).astype(np.float32)
    return siamese.keras.ops.convert_to_numpy(embedding(images))
"""

STEP = r"""
import json, os, sys

import numpy as np

from cryoem import rotations, siamese, training, training_data
import keras

assert keras.backend.backend() == os.environ["KERAS_BACKEND"], keras.backend.backend()
tensorflow_imported = "tensorflow" in sys.modules  # after importing cryoem.siamese and .training(_data)
siamese.configure_threads(1)
keras.utils.set_random_seed(0)
size, batch = 24, 8
model = siamese.InBatchModel(siamese.build_embedding(size, arch="light", width=0.25,
                                                     feature_dim=16))
model.compile(optimizer=keras.optimizers.Adam(1e-2))
model.build((None, size, size))
rng = np.random.default_rng(0)
images = rng.standard_normal((batch, size, size)).astype(np.float32)
targets = training_data.target_matrix(rotations.sample_uniform(batch, seed=0),
                                 rotations.point_group("C1"))

# The loss in NumPy: uniform bin weights over the pairs i < j (bins=16, cap=10).
d = keras.ops.convert_to_numpy(model(images))
i, j = np.triu_indices(batch, k=1)
which = np.clip((targets[i, j] / np.pi * 16).astype(int), 0, 15)
weights = 1 / np.maximum(np.bincount(which, minlength=16)[which], len(i) / (16 * 10.0))
expected = float(np.sum(weights / weights.sum() * (d[i, j] - targets[i, j]) ** 2))

before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
loss = float(model.train_on_batch(images, targets))
after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]

# The polar front end with the horizon loss (τ = 1.5): far pairs pay only for falling short.
polar = siamese.InBatchModel(siamese.build_embedding(size, arch="light", width=0.25,
                                                     feature_dim=16, front="polar"), horizon=1.5)
polar.compile(optimizer=keras.optimizers.Adam(1e-2))
polar.build((None, size, size))
d = keras.ops.convert_to_numpy(polar(images))
residuals = np.where(targets[i, j] < 1.5, d[i, j] - targets[i, j], np.minimum(d[i, j] - 1.5, 0))
polar_expected = float(np.sum(weights / weights.sum() * residuals ** 2))
polar_before = [keras.ops.convert_to_numpy(w).copy() for w in polar.trainable_weights]
polar_loss = float(polar.train_on_batch(images, targets))
polar_changed = sum(not np.allclose(b, keras.ops.convert_to_numpy(a))
                    for b, a in zip(polar_before, polar.trainable_weights))

# The confidence head: the pairs' Gaussian likelihood, sum w (r^2 / v + log v).
sure = siamese.InBatchModel(siamese.build_embedding(size, arch="light", width=0.25,
                                                    feature_dim=16, confidence=True),
                            confidence=True)
sure.compile(optimizer=keras.optimizers.Adam(1e-2))
sure.build((None, size, size))
d, v = keras.ops.convert_to_numpy(sure(images))
r2 = (d[i, j] - targets[i, j]) ** 2
sure_expected = float(np.sum(weights / weights.sum() * (r2 / v[i, j] + np.log(v[i, j]))))
sure_before = [keras.ops.convert_to_numpy(w).copy() for w in sure.trainable_weights]
sure_loss = float(sure.train_on_batch(images, targets))
sure_changed = sum(not np.allclose(b, keras.ops.convert_to_numpy(a))
                   for b, a in zip(sure_before, sure.trainable_weights))
""" + FEATURES + r"""
print(json.dumps({
    "backend": keras.backend.backend(), "loss": loss, "expected": expected,
    "changed": sum(not np.allclose(b, a) for b, a in zip(before, after)),
    "weights": len(before), "tensorflow_imported": tensorflow_imported,
    "polar": [polar_loss, polar_expected, polar_changed, len(polar_before)],
    "confidence": [sure_loss, sure_expected, sure_changed, len(sure_before)],
    "pretrained": pretrained_features(siamese).tolist(),
}))
"""


@pytest.fixture(scope="module")
def reference_features():
    namespace = {"np": np}
    exec(FEATURES, namespace)
    return namespace["pretrained_features"](siamese)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_one_training_step(backend, reference_features):
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"the {backend} Keras backend needs the {BACKENDS[backend]} package, "
                    "which is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
           # XLA's CPU optimisation passes took ~2 s per initialiser on a loaded CPU (JAX: 50 s
           # for one step); without them the step compiles in seconds and computes the same.
           "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS"),
                                               "--xla_backend_optimization_level=0"]))}
    run = subprocess.run([sys.executable, "-c", STEP], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert result["loss"] == pytest.approx(result["expected"], rel=1e-4)
    assert 0 < result["loss"] < 10  # finite, and at most π² on average
    assert result["changed"] == result["weights"] > 0
    polar_loss, polar_expected, polar_changed, polar_weights = result["polar"]
    assert polar_loss == pytest.approx(polar_expected, rel=1e-4) and polar_loss < 10
    assert polar_changed == polar_weights > 0
    sure_loss, sure_expected, sure_changed, sure_weights = result["confidence"]
    assert sure_loss == pytest.approx(sure_expected, rel=1e-4, abs=1e-5)
    assert sure_changed == sure_weights > 0
    if backend != "tensorflow":
        assert not result["tensorflow_imported"], "cryoem.siamese/training imported TensorFlow"
    np.testing.assert_allclose(result["pretrained"], reference_features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sizes", [(64, 32), (48, 36), (33, 16), (24, 24)])
def test_area_resize_is_tensorflows_area_resize(sizes):
    """AreaResize (any backend) computes what TensorFlow's ``Resizing("area")`` does."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference, Keras's area Resizing, runs on TensorFlow only")
    n_in, n_out = sizes
    images = np.random.default_rng(n_in).standard_normal((3, n_in, n_in, 2)).astype(np.float32)
    reference = keras.layers.Resizing(n_out, n_out, interpolation="area")(images)
    resized = siamese.AreaResize(n_out)(images)
    assert resized.shape == (3, n_out, n_out, 2)
    np.testing.assert_allclose(np.asarray(resized), np.asarray(reference), atol=2e-5)
    restored = siamese.AreaResize.from_config(siamese.AreaResize(n_out).get_config())
    assert restored.size == n_out
