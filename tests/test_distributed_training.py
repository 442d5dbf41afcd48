"""Training under ``tf.distribute`` (``cryoem train --strategy``) on two logical CPU devices.

The CPU must be split into logical devices before TensorFlow initialises, so
the mirrored run happens in a fresh interpreter.  It trains with the command
line, then checks one SGD step of the mirrored model against an independent
reference: with two replicas, each pairs the images of its half of the global
batch and the update is the mean of their gradients, so the weights after the
step must be the mean of two one-device steps, one on each half (and the loss
the mean of their losses), and differ from a one-device step on the whole batch.
Two workers on this host (``--strategy multiworker``, marked slow) must then
train exactly as the two logical devices did.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoem import cli, datasets, devices, rotations, siamese, training_data, volumes

ROOT = Path(__file__).resolve().parents[1]

MIRRORED = r"""
import json, sys

import numpy as np
import tensorflow as tf

from cryoem import cli, datasets, devices, rotations, siamese, training_data

keras = siamese.keras
data_path, out = sys.argv[1:3]
code = cli.main(["train", data_path, "--out", out, "--strategy", "mirrored", "--logical-cpus",
                 "2", *sys.argv[3:]])
strategy = devices.make_strategy("mirrored", logical_cpus=2)  # the command's, again
try:
    devices.make_strategy("mirrored", logical_cpus=3)
    too_late = ""
except RuntimeError as error:
    too_late = str(error)

data = datasets.load(data_path)
half = 4
images, quaternions = data.projections[:2 * half], data.orientations[:2 * half]


def model(kind=siamese.InBatchModel, eager=False):
    keras.utils.set_random_seed(3)
    net = kind(siamese.build_embedding(data.size, width=0.25, feature_dim=8))
    net.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=eager)
    net.build((None, data.size, data.size))
    return net


def one_device_step(x, q):
    # Independent of the sharding: distances of x's own orientations, one device.
    targets = rotations.symmetric_distance_matrix(q, rotations.point_group("C1"))
    single.set_weights(start)
    loss = float(single.compute_loss(y=targets.astype(np.float32), y_pred=single(x)))
    single.train_on_batch(x, targets.astype(np.float32))
    return loss, single.get_weights()


single = model()
start = single.get_weights()
halves = [one_device_step(images[r * half:(r + 1) * half], quaternions[r * half:(r + 1) * half])
          for r in range(2)]
whole = one_device_step(images, quaternions)[1]

seen = []


class Probe(siamese.InBatchModel):
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seen.append([int(replica), list(x.shape), list(y.shape)])
        return super().compute_loss(x, y, y_pred, sample_weight, training)


with strategy.scope():  # eager, so that the probe sees each replica's actual shapes
    mirrored = model(Probe, eager=True)
mirrored.set_weights(start)
history = mirrored.fit(training_data.FixedBatches(images, quaternions, batch_size=half, shuffle=False,
                                             replicas=2), epochs=1, verbose=0)
after = mirrored.get_weights()
mean = [(a + b) / 2 for a, b in zip(halves[0][1], halves[1][1])]
print(json.dumps({
    "code": code, "too_late": too_late, "replicas": strategy.num_replicas_in_sync, "seen": seen,
    "loss": history.history["loss"][0], "half_losses": [loss for loss, _ in halves],
    "from_mean": max(float(np.abs(a - m).max()) for a, m in zip(after, mean)),
    "from_whole": max(float(np.abs(a - w).max()) for a, w in zip(after, whole)),
    "step": max(float(np.abs(a - s).max()) for a, s in zip(after, start)),
}))
"""


#: The training run of both strategies: 2 epochs of 2 steps, 4 images per replica.
TRAIN = ["--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4", "--width", "0.25",
         "--threads", "1"]


def environment(**extra):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    return {**env, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
            "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **extra}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    return datasets.generate(volumes.resolve("phantom", 16), 48, path, seed=0)


@pytest.fixture(scope="module")
def mirrored(tiny, tmp_path_factory):
    """The mirrored run in a fresh interpreter: its model folder, output and checks."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tf.distribute needs TensorFlow, which is not installed")
    out = tmp_path_factory.mktemp("mirrored") / "model"
    run = subprocess.run([sys.executable, "-c", MIRRORED, str(tiny), str(out), *TRAIN],
                         env=environment(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    return out, run.stdout, json.loads(run.stdout.strip().splitlines()[-1])


def test_mirrored_training_on_two_logical_cpus(tiny, mirrored):
    out, stdout, result = mirrored
    assert "strategy mirrored: 2 replicas in sync" in stdout
    assert result["code"] == 0 and result["replicas"] == 2
    assert "already initialised" in result["too_late"]

    # The command's run: recorded, finite, and its model loads and embeds (here, any backend).
    config = json.loads((out / "config.json").read_text())
    assert (config["strategy"], config["replicas"], config["batch_size"]) == ("mirrored", 2, 4)
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    assert len(history) == 2 and np.all(np.isfinite(history["loss"]))
    assert np.all(np.isfinite(history["val_loss"]))
    embedding, _ = siamese.load_embedding(out)
    features = np.asarray(embedding(datasets.load(tiny).projections[:5]))
    assert features.shape == (5, 128) and np.all(np.isfinite(features))

    # Sharding: each replica got its half of the 8 images and its own 4×4 targets.
    assert sorted(result["seen"]) == [[0, [4, 16, 16], [4, 4]], [1, [4, 16, 16], [4, 4]]]
    # Reduction: the mean of the one-device steps on each half, not a step on the whole batch.
    assert result["loss"] == pytest.approx(np.mean(result["half_losses"]), rel=1e-5)
    assert result["step"] > 0.01
    assert result["from_mean"] < 1e-5 * max(1.0, result["step"])
    assert result["from_whole"] > 100 * result["from_mean"] + 1e-3


@pytest.mark.slow
def test_two_workers_train_as_two_devices(tiny, mirrored, tmp_path):
    """``--strategy multiworker``: two processes on this host, one CPU replica each."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            ports.append(probe.getsockname()[1])
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = [subprocess.Popen(
        [sys.executable, "-m", "cryoem.cli", "train", str(tiny), "--out", str(tmp_path / f"w{i}"),
         "--strategy", "multiworker", *TRAIN], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(TF_CONFIG=json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": i}})))
        for i in range(2)]
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-4000:]
        assert "strategy multiworker: 2 replicas in sync" in stdout
    reference = (mirrored[0] / "history.csv").read_text()
    images = datasets.load(tiny).projections[:5]
    expected = np.asarray(siamese.load_embedding(mirrored[0])[0](images))
    for i in range(2):
        config = json.loads((tmp_path / f"w{i}" / "config.json").read_text())
        assert (config["strategy"], config["replicas"]) == ("multiworker", 2)
        history = (tmp_path / f"w{i}" / "history.csv").read_text()
        np.testing.assert_allclose(np.genfromtxt(history.splitlines(), delimiter=","),
                                   np.genfromtxt(reference.splitlines(), delimiter=","),
                                   rtol=1e-5)
        features = np.asarray(siamese.load_embedding(tmp_path / f"w{i}")[0](images))
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-6)


def test_target_matrix_and_rendered_batches_per_replica():
    q = rotations.sample_uniform(8, seed=1)
    group = rotations.point_group("C2")
    stacked = training_data.target_matrix(q, group, replicas=2)
    assert stacked.shape == (8, 4)
    for r in range(2):
        np.testing.assert_allclose(stacked[4 * r:4 * r + 4],
                                   rotations.symmetric_distance_matrix(q[4 * r:4 * r + 4], group),
                                   atol=1e-6)
    volume = volumes.resolve("phantom", 16)
    common = dict(volumes=[volume.data], pixel_sizes=[1.0], symmetries=["C1"],
                  signal_variances=[1.0], batch_size=6, steps=1, near_angle=0.2, seed=5)
    images, targets = training_data.RenderedBatches(replicas=2, **common)[0]
    assert images.shape == (12, 16, 16) and targets.shape == (12, 6)
    for r in range(2):  # each replica's slice holds its far orientations and their near partners
        block = targets[6 * r:6 * r + 6]
        assert np.all(np.diag(block[:3, 3:]) <= 0.2 + 1e-6)
    one, _ = training_data.RenderedBatches(**common)[0]
    np.testing.assert_array_equal(images[:6], one)  # the first slice is the one-device batch


@pytest.mark.parametrize("tf_config, message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{oops", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', '"task"'),
])
def test_multiworker_needs_a_valid_tf_config(tf_config, message, tmp_path, monkeypatch, capsys):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    argv = ["train", str(tmp_path / "unread.h5"), "--out", str(tmp_path / "m"),
            "--strategy", "multiworker"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryoem train: error: ") and message in err[0]


def test_strategy_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    argv = ["train", str(tmp_path / "unread.h5"), "--out", str(tmp_path / "m"),
            "--logical-cpus", "2"]
    assert cli.main(argv) == 2
    assert "--strategy mirrored" in capsys.readouterr().err
    assert devices.make_strategy("none") is None and devices.replicas(None) == 1
    monkeypatch.setattr(devices.keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        devices.make_strategy("mirrored")
