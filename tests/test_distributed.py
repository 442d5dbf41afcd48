"""Streaming stacks and Dask: the same results from a file read in chunks and from workers."""

import h5py
import mrcfile
import numpy as np
import pytest

from cryoem import cli, datasets, distributed, projection, reconstruction, refinement, rotations
from cryoem import stacks, volumes


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of two worker processes for the module (its address is tested too)."""
    with distributed.connect("local:2", verbose=False) as client:
        yield client


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """240 shifted projections of a phantom with a CTF, in memory and in a dataset file."""
    phantom = volumes.gaussian_phantom(24, n_blobs=8, sigma=1.6, seed=4)
    q = rotations.sample_uniform(240, seed=1)
    shifts = projection.sample_shifts(240, 1.5, seed=3)
    ctf = projection.sample_ctf(240, seed=2)
    images = projection.project(phantom.data, q, shifts=shifts, ctf=ctf, pixel_size=2.0)
    path = tmp_path_factory.mktemp("stack") / "data.h5"
    datasets.save(path, images, q, shifts, 2.0, ctf=ctf, volume=phantom.data)
    return images.astype(np.float32), q, shifts, ctf, path


def test_a_stack_reads_the_rows_h5py_reads(problem):
    images, _, _, _, path = problem
    stack = stacks.ImageStack(path)
    assert stack.shape == images.shape
    view = stack[10:50]
    assert isinstance(view, stacks.ImageStack) and len(view) == 40  # a slice reads nothing
    rows = np.array([7, 3, 3, 200, 0])  # unsorted, repeated: HDF5 wants neither
    with h5py.File(path, "r") as f:
        expected = f["projections"][10:50]
        assert np.array_equal(np.asarray(view), expected)
        assert np.array_equal(stack[rows], np.stack([f["projections"][r] for r in rows]))
        assert np.array_equal(stacks.take(view, [5, 1]).read(), f["projections"][[11, 15]][::-1])


def test_a_stack_reads_an_mrcs_by_memory_mapping(tmp_path, problem):
    images = problem[0][:30]
    path = tmp_path / "particles.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(images)
    stack = stacks.ImageStack(path)
    assert stack.shape == (30, 24, 24)
    assert np.array_equal(stack[[29, 2]], images[[29, 2]])


def test_reconstruction_from_a_stack_equals_the_one_in_memory(problem):
    images, q, shifts, ctf, path = problem
    options = dict(shifts=shifts, ctf=ctf, pixel_size=2.0, batch_size=50)
    in_memory = reconstruction.reconstruct(images, q, **options)
    streamed = reconstruction.reconstruct(stacks.ImageStack(path), q, **options)
    # finufft's threads add in varying order: equal up to the last bits, run to run.
    assert np.max(np.abs(streamed.data - in_memory.data)) < 1e-5 * np.max(np.abs(in_memory.data))


def test_reconstruction_on_two_workers_equals_the_one_in_process(problem, cluster):
    images, q, shifts, ctf, path = problem
    options = dict(shifts=shifts, ctf=ctf, pixel_size=2.0, batch_size=50, symmetry="C2")
    here = reconstruction.reconstruct(images, q, **options).data
    there = reconstruction.reconstruct(stacks.ImageStack(path), q, client=cluster,
                                       **options).data
    # The chunks' sums arrive in completion order: equal up to the last bits.
    assert np.max(np.abs(there - here)) < 1e-5 * np.max(np.abs(here))


@pytest.fixture(scope="module")
def refined_here(problem):
    """The in-process refinement the distributed ones must equal: its start, options, result."""
    images, q, shifts, ctf, path = problem
    start = rotations.multiply(rotations.axis_angle_to_quaternion(
        np.random.default_rng(0).standard_normal((240, 3)), 0.1), q)
    options = dict(ctf=ctf, pixel_size=2.0, iterations=2, global_iterations=1,
                   global_candidates=2000, chunk=40, seed=0)
    return start, options, refinement.refine(images, start, **options)


@pytest.mark.parametrize("source", ["stack", "array"])
def test_refinement_on_two_workers_equals_the_one_in_process(problem, refined_here, cluster,
                                                             source):
    """From a file each worker reads its chunks; from memory the images are sent once."""
    images, path = problem[0], problem[-1]
    start, options, here = refined_here
    given = stacks.ImageStack(path) if source == "stack" else images
    there = refinement.refine(given, start, client=cluster, **options)
    assert np.max(rotations.geodesic_distance(here.quaternions, there.quaternions)) < 1e-4
    assert np.max(np.abs(here.shifts - there.shifts)) < 1e-4
    assert np.allclose(here.scores, there.scores, atol=1e-5)
    assert [h["mean_change_rad"] for h in here.history] == pytest.approx(
        [h["mean_change_rad"] for h in there.history], abs=1e-6)


def test_the_command_line_reconstructs_on_a_running_scheduler(problem, cluster, tmp_path):
    path = problem[-1]
    argv = ["reconstruct", str(path), "--quiet", "--iterations", "10"]
    assert cli.main([*argv, "--out", str(tmp_path / "here.mrc")]) == 0
    address = cluster.scheduler.address
    assert cli.main([*argv, "--out", str(tmp_path / "there.mrc"),
                     "--dask-scheduler", address]) == 0
    here, there = (mrcfile.read(tmp_path / name) for name in ("here.mrc", "there.mrc"))
    assert np.max(np.abs(there - here)) < 1e-5 * np.max(np.abs(here))


def test_an_unreachable_scheduler_is_one_clear_line(problem, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1)
    status = cli.main(["reconstruct", str(problem[-1]), "--out", str(tmp_path / "m.mrc"),
                       "--dask-scheduler", "tcp://127.0.0.1:9"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert error[-1].startswith("cryoem reconstruct: error: no Dask scheduler answered at "
                                "tcp://127.0.0.1:9")
    assert not (tmp_path / "m.mrc").exists()


@pytest.mark.parametrize("scheduler", ["local:0", "local:two", "somewhere"])
def test_a_malformed_scheduler_is_refused(scheduler):
    with pytest.raises(ValueError, match="--dask-scheduler"):
        with distributed.connect(scheduler):
            pass


def _die(chunk):
    import os

    os._exit(1)


def test_a_dead_worker_is_a_clear_error():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.connect("local:1", verbose=False) as client:
            with pytest.raises(RuntimeError, match="a Dask worker died"):
                distributed.map_chunks(_die, [1], client=client, desc="dying")


def test_embeddings_on_two_workers_equal_the_ones_in_process(problem, cluster, tmp_path):
    """`cryoem distances --neighbours` embeds chunks on the workers (each loads the model)."""
    from cryoem import embedding_graph

    images, path = problem[0], problem[-1]
    here = embedding_graph.embed("pretrained", images, chunk=100)
    out = tmp_path / "graph.h5"
    assert cli.main(["distances", str(path), "--model", "pretrained", "--split", "all",
                     "--neighbours", "5", "--out", str(out),
                     "--dask-scheduler", cluster.scheduler.address]) == 0
    there = embedding_graph.load_embeddings(out)
    assert np.max(np.abs(there.features - here)) < 1e-5
    rows, cols, _ = embedding_graph.neighbour_graph(here, 5)
    assert np.array_equal(there.rows, rows) and np.array_equal(there.cols, cols)
