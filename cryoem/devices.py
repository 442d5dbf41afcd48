"""Where training runs: backend threads, ``tf.distribute`` strategies (``cryoem train --strategy``).

* :func:`configure_threads` — the backend's CPU threads.
* :func:`make_strategy` — ``"none"``, ``"mirrored"`` (the GPUs of one host, or
  the CPU split into logical devices) or ``"multiworker"`` (several hosts,
  from ``TF_CONFIG``).  Both must run before TensorFlow initialises its
  devices: first thing in a fresh process.
* :func:`accelerator` — what the Keras backend trains on, for a run's record.
* :func:`scale_loss` — the per-replica share of a custom loss, as Keras's own
  losses do under a strategy.

(The other stages spread their work with Dask instead: :mod:`cryoem.distributed`.)

Data parallelism, synchronous: every replica holds the same weights, takes
its share of each global batch and computes its gradient; the gradients are
summed across replicas (all-reduce) and every replica applies the same
update.  :func:`cryoem.training.train` builds the model and optimizer inside
``strategy.scope()`` and hands Keras a :class:`keras.utils.PyDataset` whose
global batch is ``replicas × batch_size`` images; Keras's TensorFlow trainer
distributes it (``experimental_distribute_dataset``), giving each replica a
consecutive ``batch_size`` slice.  The loss is an in-batch pairwise loss, so
each replica scores the pairs within its own slice: the per-replica batch
(and the number of pairs per gradient) is that of a one-device run with the
same ``--batch-size``, and each step sees ``replicas`` times as many images.
The targets are laid out so that each slice carries its own ``(batch_size,
batch_size)`` matrix (:func:`cryoem.training_data.target_matrix` with ``replicas``);
in rendered mode each slice is rendered as a whole batch (its far
orientations with their near partners), so no pair is split across replicas.
Learning rate and epochs are not rescaled.  ``tests/test_distributed_training.py``
checks on two logical CPU devices that each replica gets its half and that
one step equals the mean of one-device steps on the two halves, and that two
local workers train exactly as the two devices do.

Several GPUs on one host
------------------------
``MirroredStrategy`` over every visible GPU::

    cryoem train data/4ake.h5 --out models/4ake --strategy mirrored --batch-size 64

Each GPU takes 64 images per step (the global batch is 64 × GPUs); choose
the GPUs with ``CUDA_VISIBLE_DEVICES``.  On a machine without GPUs,
``--logical-cpus N`` splits the CPU into ``N`` logical devices
(``tf.config.set_logical_device_configuration``): a test of the distributed
path, not a speed-up (they share the CPU's threads).

Several hosts
-------------
``MultiWorkerMirroredStrategy``: start the same command on every host, each
with a ``TF_CONFIG`` environment variable that lists the whole cluster and
says which worker this one is (``"index"``: 0 on the first host, 1 on the
second…)::

    export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    cryoem train data/4ake.h5 --out models/4ake --strategy multiworker

Every worker needs the dataset at the same path and a port the others can
reach; training starts once all workers have joined.  Replicas are all the
GPUs of all workers (one per worker on CPU-only hosts).  Each worker renders
(or reads) every global batch and keeps its share (tf.data's ``DATA``
auto-sharding), which is why the batches are seeded by epoch and step: all
workers draw the same ones; the rendering is not divided among workers.  Every
worker writes the model folder (all hold the same weights); keep worker 0's,
and on a shared file system give each worker its own ``--out``.  Keras 3's
``fit`` fails under this strategy as it comes (keras-team/keras#20585: it
reduces structures and scalars in ways the multi-worker all-reduce refuses);
:class:`cryoem.siamese.InBatchModel` works around both places.

The strategies need the TensorFlow Keras backend (``KERAS_BACKEND=tensorflow``,
the default); under JAX or PyTorch, train on one device.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras

__all__ = ["STRATEGIES", "accelerator", "configure_threads", "make_strategy", "replicas", "strategy_name",
           "across_workers", "describe", "scale_loss"]

#: The values of ``cryoem train --strategy``.
STRATEGIES = ("none", "mirrored", "multiworker")

#: The strategies made in this process, by (name, logical CPUs): see :func:`make_strategy`.
_MADE: dict[tuple[str, int | None], Any] = {}


def configure_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads and one inter-op thread in the backend; ``None`` keeps defaults.

    TensorFlow and PyTorch take the setting (call before any network work:
    afterwards they may ignore it).  JAX reads its threads when it starts
    (``XLA_FLAGS``), so under JAX this does nothing.  finufft takes its
    threads per call (``nthreads``) and BLAS from ``OMP_NUM_THREADS``.
    """
    if n is None:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised: the settings can no longer change
            pass
    elif backend == "torch":
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work has started
            pass


def make_strategy(name: str | None, logical_cpus: int | None = None) -> Any:
    """The ``tf.distribute.Strategy`` called ``name``, or ``None`` for one device.

    Parameters
    ----------
    name
        ``None``, ``"none"`` or ``"default"``: no strategy.  ``"mirrored"``:
        ``tf.distribute.MirroredStrategy`` over this host's GPUs (or its CPU
        when it has none).  ``"multiworker"``:
        ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster in the
        ``TF_CONFIG`` environment variable.
    logical_cpus
        With ``"mirrored"``: split the CPU into this many logical devices and
        mirror over them instead (tests and demonstrations).  This must happen
        before TensorFlow initialises its devices; afterwards it raises
        ``RuntimeError`` (unless the CPU is already split this way).

    The same arguments return the same strategy for the life of the process:
    two mirrored strategies side by side clash in TensorFlow's collectives
    (a shape mismatch in the all-reduce once both have trained a model).

    Raises
    ------
    ValueError
        Unknown name, ``TF_CONFIG`` missing or malformed, ``logical_cpus``
        without ``"mirrored"``, or a Keras backend other than TensorFlow.
    """
    name = (name or "none").lower()
    if name == "default":
        name = "none"
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose {', '.join(STRATEGIES)}")
    if logical_cpus is not None and name != "mirrored":
        raise ValueError("--logical-cpus splits the CPU for --strategy mirrored only")
    if logical_cpus is not None and logical_cpus < 1:
        raise ValueError(f"--logical-cpus must be at least 1, got {logical_cpus}")
    if name == "none":
        return None
    if name == "multiworker":
        _check_tf_config(os.environ.get("TF_CONFIG"))
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(f"--strategy {name} uses tf.distribute, which needs the TensorFlow Keras "
                         f"backend, but this process runs {backend}: set KERAS_BACKEND=tensorflow "
                         "(or train on one device)")
    import tensorflow as tf

    key = (name, logical_cpus)
    if key not in _MADE:
        if name == "multiworker":
            _MADE[key] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            devices = _split_cpu(logical_cpus) if logical_cpus is not None else None
            _MADE[key] = tf.distribute.MirroredStrategy(devices)
    return _MADE[key]


def _split_cpu(n: int) -> list[str]:
    """Split the first CPU into ``n`` logical devices; their names."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    too_late = (f"cannot split the CPU into {n} logical devices: TensorFlow has already "
                "initialised its devices; create the strategy first thing in a fresh process, "
                "before any TensorFlow work")
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError as error:
        raise RuntimeError(f"{too_late} ({error})") from error
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) != n:
        raise RuntimeError(f"{too_late} (it has {len(devices)} logical CPU devices)")
    return devices


def _check_tf_config(text: str | None) -> dict[str, Any]:
    """The parsed ``TF_CONFIG``, or a ``ValueError`` that says what is wrong with it."""
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\' (see cryoem.devices)')
    if not text:
        raise ValueError("--strategy multiworker reads the cluster from the TF_CONFIG "
                         f"environment variable, which is not set: {example}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {example}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if (not isinstance(cluster, dict) or not cluster.get("worker") or
            not all(isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)
                    for hosts in cluster.values())):
        raise ValueError(f"TF_CONFIG needs a \"cluster\" with a list of \"worker\" addresses: "
                         f"{example}")
    if (not isinstance(task, dict) or task.get("type") not in cluster or
            not isinstance(task.get("index"), int) or
            not 0 <= task["index"] < len(cluster[task["type"]])):
        raise ValueError("TF_CONFIG needs a \"task\" naming this process: a \"type\" of the "
                         "cluster and an \"index\" into its list: " + example)
    return config


def replicas(strategy: Any) -> int:
    """Replicas in sync under ``strategy`` (all devices of all workers); 1 without one."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def strategy_name(strategy: Any) -> str:
    """``"none"``, ``"mirrored"``, ``"multiworker"``, or the class name of another strategy."""
    if strategy is None:
        return "none"
    kind = type(strategy).__name__
    return {"MirroredStrategy": "mirrored",
            "MultiWorkerMirroredStrategy": "multiworker",
            "CollectiveAllReduceStrategy": "multiworker"}.get(kind, kind)


def across_workers(strategy: Any) -> bool:
    """Whether ``strategy`` is a ``MultiWorkerMirroredStrategy`` over more than one worker."""
    if strategy_name(strategy) != "multiworker":
        return False
    return sum(map(len, strategy.cluster_resolver.cluster_spec().as_dict().values())) > 1


def describe(strategy: Any) -> str:
    """One line: the strategy, its replicas and their devices."""
    if strategy is None:
        return "strategy none: one device"
    devices = getattr(strategy.extended, "worker_devices", ())
    where = f" on {', '.join(devices)}" if devices else ""
    count = replicas(strategy)
    return f"strategy {strategy_name(strategy)}: {count} replica{'s' * (count != 1)} in sync{where}"


def accelerator() -> str:
    """What the Keras backend trains on: ``"<backend>: <device>"``, the device being the
    backend's first GPU by name, or else the processor (:func:`cryoem.provenance.machine`)."""
    from .provenance import machine

    backend = keras.backend.backend()
    gpu = {"jax": _jax_gpu, "torch": _torch_gpu, "tensorflow": _tensorflow_gpu}.get(backend)
    return f"{backend}: {(gpu() if gpu else None) or machine()['cpu_model']}"


def _jax_gpu() -> str | None:
    import jax

    device = jax.devices()[0]
    return None if device.platform == "cpu" else str(device.device_kind)


def _torch_gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _tensorflow_gpu() -> str | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def scale_loss(loss: Any) -> Any:
    """A replica's loss divided by the replicas in sync (TensorFlow backend; else unchanged).

    The strategy sums the replicas' gradients, so each must contribute its
    share for the update to be the mean over replicas; Keras's own losses do
    this, a ``compute_loss`` override must do it itself.  Keras multiplies
    the reported loss back, so logs show the mean of the replicas' losses.
    """
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    count = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if count == 1 else loss / count
