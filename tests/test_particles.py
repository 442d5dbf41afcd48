"""Reading RELION particle sets: STAR files as RELION 3.0 and 3.1 write them, and every bad input.

The STAR files here are written as text, line by line as RELION writes them (not by the
``starfile`` package the reader uses), and the stacks with ``mrcfile``.
"""

import mrcfile
import numpy as np
import pytest

from cryoem import cli, datasets, particles

N, L = 4, 16


@pytest.fixture
def stack(tmp_path):
    """Four distinct 16×16 images in ``Particles/stack.mrcs``: image k is filled with k + 1."""
    folder = tmp_path / "Particles"
    folder.mkdir()
    images = np.stack([np.full((L, L), k + 1.0, dtype=np.float32) for k in range(N)])
    images[:, 0, 0] = 0.0  # not constant: normalisation needs a spread
    with mrcfile.new(folder / "stack.mrcs") as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
    return folder / "stack.mrcs"


def star_text(columns, rows, optics=None):
    """A STAR file's text: an optional ``data_optics`` loop, then ``data_particles``."""
    lines = []
    if optics is not None:
        names, values = optics
        lines += ["", "data_optics", "", "loop_"]
        lines += [f"_{name} #{k + 1}" for k, name in enumerate(names)]
        lines += ["  ".join(str(v) for v in row) for row in values]
        lines += ["", ""]
    lines += ["data_particles" if optics is not None else "data_", "", "loop_"]
    lines += [f"_{name} #{k + 1}" for k, name in enumerate(columns)]
    lines += ["  ".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


OPTICS_31 = (["rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize",
              "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"],
             [[1, "opticsGroup1", 1.5, L, 300.0, 2.7, 0.1],
              [2, "opticsGroup2", 1.5, L, 200.0, 1.4, 0.07]])
OPTICS_ONE = (OPTICS_31[0], OPTICS_31[1][:1])


def test_relion_3_1_with_two_optics_groups(tmp_path, stack):
    columns = ["rlnImageName", "rlnOpticsGroup", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
               "rlnOriginXAngst", "rlnOriginYAngst", "rlnAngleRot", "rlnAngleTilt",
               "rlnAnglePsi"]
    rows = [[f"{k + 1}@Particles/stack.mrcs", 1 + k % 2, 15000 + k, 14000 + k, 10.0,
             3.0 * k, -1.5, 10.0 * k, 45.0, 0.0] for k in range(N)]
    star = write(tmp_path, "particles.star", star_text(columns, rows, OPTICS_31))
    data = datasets.load(particles.import_relion(star, tmp_path / "d.h5", normalize=False))
    np.testing.assert_array_equal(data.projections[:, 5, 5], [1, 2, 3, 4])
    np.testing.assert_array_equal(data.ctf.voltage, [300, 200, 300, 200])
    np.testing.assert_array_equal(data.ctf.cs, [2.7, 1.4, 2.7, 1.4])
    np.testing.assert_array_equal(data.ctf.amplitude_contrast, [0.1, 0.07, 0.1, 0.07])
    np.testing.assert_array_equal(data.ctf.defocus_v, [14000, 14001, 14002, 14003])
    # Origin in Å over 1.5 Å/px, pointing to the centre: shift = −origin / pixel.
    np.testing.assert_allclose(data.shifts, np.stack([-2.0 * np.arange(N), np.ones(N)], -1))
    assert data.source("orientations") == datasets.REFERENCE
    assert data.pixel_size == 1.5


def test_a_set_that_keeps_only_another_optics_group_gets_that_groups_values(tmp_path, stack):
    columns = ["rlnImageName", "rlnOpticsGroup", "rlnDefocusU"]
    rows = [[f"{k + 1}@Particles/stack.mrcs", 2, 12000] for k in range(N)]
    star = write(tmp_path, "group2.star", star_text(columns, rows, OPTICS_31))
    data = datasets.load(particles.import_relion(star, tmp_path / "d.h5"), images=False)
    assert set(data.ctf.voltage) == {200.0} and set(data.ctf.cs) == {1.4}
    assert data.source("orientations") == datasets.ABSENT


def test_relion_3_0_per_particle_optics_and_origins_in_pixels(tmp_path, stack):
    """RELION 3.0: no optics table; voltage, Cs, contrast and pixel size on every particle."""
    columns = ["rlnImageName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
               "rlnDetectorPixelSize", "rlnMagnification", "rlnDefocusU", "rlnOriginX",
               "rlnOriginY"]
    rows = [[f"{k + 1}@Particles/stack.mrcs", 300 - 100 * (k % 2), 2.0 + k, 0.1, 5.0, 25000,
             20000, 1.0 * k, 2.0] for k in range(N)]
    star = write(tmp_path, "v30.star", star_text(columns, rows))
    data = datasets.load(particles.import_relion(star, tmp_path / "d.h5", size=8), images=False)
    np.testing.assert_array_equal(data.ctf.voltage, [300, 200, 300, 200])
    np.testing.assert_array_equal(data.ctf.cs, [2.0, 3.0, 4.0, 5.0])
    assert data.pixel_size == pytest.approx(2.0 * 16 / 8)  # 5 µm / 25,000 = 2 Å, then binned
    # Origins in original pixels, halved with the box.
    np.testing.assert_allclose(data.shifts, -np.stack([np.arange(N) / 2, np.ones(N)], -1))


def test_stacks_are_found_under_the_project_folder(tmp_path, stack):
    job = tmp_path / "Refine3D" / "job001"
    job.mkdir(parents=True)
    columns = ["rlnImageName"]
    star = write(job, "run_data.star", star_text(columns, [[f"{k + 1}@Particles/stack.mrcs"]
                                                           for k in range(N)], OPTICS_ONE))
    with pytest.raises(FileNotFoundError, match="row 1, column rlnImageName.*--datadir"):
        particles.import_relion(star, tmp_path / "x.h5")
    assert cli.main(["import-relion", str(star), "--datadir", str(tmp_path),
                     "--out", str(tmp_path / "d.h5")]) == 0
    assert len(datasets.load(tmp_path / "d.h5", images=False)) == N


@pytest.mark.parametrize("name, message", [
    ("9@Particles/stack.mrcs", "row 3, column rlnImageName: image 9 of Particles/stack.mrcs, "
                               "which holds 4"),
    ("0@Particles/stack.mrcs", "row 3, column rlnImageName: image number 0"),
    ("-1@Particles/stack.mrcs", "row 3, column rlnImageName: image number -1"),
    ("Particles/stack.mrcs", "row 3, column rlnImageName: 'Particles/stack.mrcs' is not"),
    ("x@Particles/stack.mrcs", "row 3, column rlnImageName: 'x' is not an image number"),
])
def test_bad_image_names_are_one_clear_error_and_nothing_is_written(tmp_path, stack, capsys,
                                                                     name, message):
    rows = [["1@Particles/stack.mrcs"], ["2@Particles/stack.mrcs"], [name]]
    star = write(tmp_path, "bad.star", star_text(["rlnImageName"], rows, OPTICS_ONE))
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "d.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.star" in err and message in err
    assert not (tmp_path / "d.h5").exists()


def test_missing_columns_and_groups_are_named(tmp_path, stack, capsys):
    star = write(tmp_path, "noname.star", star_text(["rlnDefocusU"], [[1.0]], OPTICS_ONE))
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "d.h5")]) == 2
    err = capsys.readouterr().err
    assert "noname.star: no particle table with an rlnImageName column" in err
    star = write(tmp_path, "group.star", star_text(
        ["rlnImageName", "rlnOpticsGroup"], [["1@Particles/stack.mrcs", 7]], OPTICS_31))
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "d.h5")]) == 2
    assert "row 1, column rlnOpticsGroup: optics group 7 is not in the optics table" in \
        capsys.readouterr().err
    star = write(tmp_path, "nopixel.star", star_text(["rlnImageName"],
                                                     [["1@Particles/stack.mrcs"]]))
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "d.h5")]) == 2
    assert "no pixel size" in capsys.readouterr().err
    star = write(tmp_path, "several.star", star_text(["rlnImageName"],
                                                     [["1@Particles/stack.mrcs"]], OPTICS_31))
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "d.h5")]) == 2
    assert "2 optics groups but no rlnOpticsGroup column" in capsys.readouterr().err
    assert not (tmp_path / "d.h5").exists()


def test_non_finite_angles_are_refused(tmp_path, stack, capsys):
    columns = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    rows = [[f"{k + 1}@Particles/stack.mrcs", 0.0, "nan" if k == 2 else 30.0, 0.0]
            for k in range(N)]
    star = write(tmp_path, "nan.star", star_text(columns, rows, OPTICS_ONE))
    assert cli.main(["import-relion", str(star), "--out", str(tmp_path / "d.h5")]) == 2
    err = capsys.readouterr().err
    assert "nan.star: row 3 of the particle table has no finite value in column rlnAngleTilt" \
        in err
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_poses_written_back_in_the_inputs_order_round_trip(tmp_path, stack, version):
    from cryoem import rotations

    columns = ["rlnImageName", "rlnDefocusU", "rlnOriginX", "rlnOriginY"]
    rows = [[f"{k + 1}@Particles/stack.mrcs", 10000 + k, 9.0, 9.0] for k in range(N)]
    if version == "3.0":
        columns += ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                    "rlnImagePixelSize"]
        rows = [row + [300.0, 2.7, 0.1, 1.5] for row in rows]
        text = star_text(columns, rows)
    else:
        text = star_text(columns, rows, OPTICS_ONE)
    source = write(tmp_path, "in.star", text)
    q = rotations.sample_uniform(N, seed=3)
    shifts = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [-1.5, 1.0]])
    # Poses estimated on a 8-px working box (pixel 3 Å): origins in Å do not depend on it.
    out = particles.write_star(source, tmp_path / "out.star", q, shifts, 3.0)
    text = out.read_text()
    assert "data_optics" in text and "rlnOriginX " not in text
    back = datasets.load(particles.import_relion(out, tmp_path / "back.h5", size=8),
                         images=False)
    np.testing.assert_allclose(rotations.geodesic_distance(back.orientations, q), 0, atol=1e-6)
    np.testing.assert_allclose(back.shifts, shifts, atol=1e-9)
    np.testing.assert_array_equal(back.ctf.defocus_u, 10000 + np.arange(N))
    assert set(back.ctf.voltage) == {300.0}


def test_a_large_stack_is_imported_a_chunk_at_a_time(tmp_path, monkeypatch):
    """6,000 particles of 32 px read, Fourier-cropped to 16 px and written 64 at a time: the
    stored stack equals the whole stack cropped with NumPy's FFT and normalised in one go, and
    the import's peak memory does not grow with the number of particles (1,500 against 6,000)."""
    import tracemalloc

    n = 6000
    images = np.random.default_rng(0).standard_normal((n, 32, 32)).astype(np.float32) * 3 + 1
    with mrcfile.new(tmp_path / "big.mrcs") as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
    columns = ["rlnImageName", "rlnImagePixelSize"]
    stars = {count: write(tmp_path, f"big{count}.star", star_text(
        columns, [[f"{k + 1}@big.mrcs", 1.0] for k in range(count)])) for count in (1, 1500, n)}
    monkeypatch.setattr(particles, "IMPORT_CHUNK", 64)
    particles.import_relion(stars[1], tmp_path / "warm.h5", size=16)  # modules loaded
    peaks = {}
    for count in (1500, n):
        tracemalloc.start()
        particles.import_relion(stars[count], tmp_path / f"big{count}.h5", size=16)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    spectra = np.fft.fftshift(np.fft.fft2(images.astype(np.float64)), axes=(-2, -1))
    cropped = np.fft.ifft2(np.fft.ifftshift(spectra[:, 8:24, 8:24], axes=(-2, -1))).real / 4
    expected = (cropped - cropped.mean()) / cropped.std()
    data = datasets.load(tmp_path / f"big{n}.h5")
    np.testing.assert_allclose(data.projections, expected, atol=1e-4)
    assert data.pixel_size == pytest.approx(2.0)
    # Held whole, the stack alone would add 4.4 MB (stored) and 17 MB (read) from 1,500 to 6,000.
    assert peaks[n] < peaks[1500] + 1.5 * 2**20, {k: f"{v / 2**20:.1f} MB" for k, v in peaks.items()}
