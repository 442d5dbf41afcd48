"""Local refinement by projection matching: accuracy, shifts, gold standard."""

import numpy as np
import pytest

from cryoem import (alignment, cli, datasets, matching, projection, recovery, refinement, rotations,
                    volumes)


@pytest.fixture(scope="module")
def problem():
    """300 projections of a phantom with shifts, and orientations perturbed by 0.2 rad."""
    phantom = volumes.gaussian_phantom(32, n_blobs=8, sigma=1.8, seed=4)
    q = rotations.sample_uniform(300, seed=1)
    shifts = projection.sample_shifts(300, 2.0, seed=3)
    images = projection.project(phantom.data, q, shifts=shifts)
    axes = np.random.default_rng(0).standard_normal((300, 3))
    start = rotations.multiply(rotations.axis_angle_to_quaternion(axes, 0.2), q)
    return images, q, shifts, start


def test_noiseless_local_refinement_corrects_orientations_and_finds_shifts(problem):
    """The local search alone, from 0.2 rad everywhere (the global pass is tested below)."""
    images, q, shifts, start = problem
    assert alignment.align_physical(start, q).mean == pytest.approx(0.2, abs=0.01)
    result = refinement.refine(images, start, iterations=8, global_iterations=0)
    assert alignment.align_physical(result.quaternions, q).mean < 0.05
    assert np.mean(np.abs(result.shifts - shifts)) < 0.2  # the true shifts were never given
    assert len(result.history) >= 4
    assert result.history[-1]["halfmap_fsc0143_angstrom"] < result.history[0][
        "halfmap_fsc0143_angstrom"] + 1e-9


def test_refinement_improves_at_snr_one_quarter(problem):
    images, q, _, start = problem
    noisy, _ = projection.add_noise(images, 0.25, seed=5)
    result = refinement.refine(noisy, start, iterations=3, soft_iterations=3,
                               global_iterations=0)
    before = alignment.align_physical(start, q).mean
    assert alignment.align_physical(result.quaternions, q).mean < before - 0.01


def test_the_global_pass_rescues_images_the_local_grid_cannot_reach():
    """A quarter of the images 1.5 rad off: out of the local grid's reach, not the global one's
    (the first global passes', or the rescue's after the local iterations)."""
    volume = volumes.resolve("4ake", 32)
    q = rotations.sample_uniform(400, seed=7)
    images = projection.project(volume.data, q, pixel_size=volume.voxel_size)
    rng = np.random.default_rng(1)
    far = rng.permutation(400)[:100]
    start = rotations.multiply(rotations.axis_angle_to_quaternion(
        rng.standard_normal((400, 3)), 0.05), q)
    start[far] = rotations.multiply(rotations.axis_angle_to_quaternion(
        rng.standard_normal((100, 3)), 1.5), q[far])
    options = dict(iterations=3, pixel_size=volume.voxel_size, seed=0)
    local = refinement.refine(images, start, global_iterations=0, rescue_candidates=0, **options)
    both = refinement.refine(images, start, global_iterations=2, rescue_candidates=0, **options)
    snapshots = []
    rescued = refinement.refine(images, start, global_iterations=0, **options,
                                callback=lambda _, q_now, __: snapshots.append(q_now.copy()) or {})
    errors_local = alignment.align_physical(local.quaternions, q).errors
    errors_both = alignment.align_physical(both.quaternions, q).errors
    errors_rescued = alignment.align_physical(rescued.quaternions, q).errors
    assert np.median(errors_local[far]) > 0.8  # stuck
    assert np.median(errors_both[far]) < 0.1  # found from the whole of SO(3)
    assert np.median(errors_rescued[far]) < 0.1
    near = np.setdiff1d(np.arange(400), far)
    assert np.median(errors_both[near]) < 0.05  # and the others stayed
    assert np.median(errors_rescued[near]) < 0.05
    assert [entry["global"] for entry in both.history[:2]] == [1.0, 1.0]
    assert [entry["rescue"] for entry in rescued.history].count(1.0) == 1
    assert not any(entry["rescue"] for entry in local.history)
    # The rescue and the polish move only the images the rescue took beyond the local grid
    # (about the hundred far ones); the others end exactly where the local iterations left
    # them.
    after = [entry["rescue"] for entry in rescued.history].index(1.0)
    polish = [entry for entry in rescued.history[after + 1:] if entry["polish"]]
    assert polish and all(entry["matched"] == polish[0]["matched"] for entry in polish)
    assert 80 <= polish[0]["matched"] <= 130
    changed = rotations.geodesic_distance(rescued.quaternions, snapshots[after - 1]) > 0
    assert np.sum(changed) == polish[0]["matched"]
    assert np.sum(changed[far]) >= 0.8 * np.sum(changed)


def test_the_halves_never_see_each_other(problem, monkeypatch):
    """Apart from the half-map FSC (the shared low-pass), the turn between the halves'
    frames (which moves the second half only) and when to stop (both halves iterate
    together, as RELION's do), one half's images never reach the other.

    With the FSC and the number of iterations held fixed (tolerance 0: no early stop),
    changing the images of the second half leaves the first half's refinement exactly as it
    was, its masked references included.
    """
    images, _, _, start = problem
    fixed = refinement.resolution.fsc(np.ones((32,) * 3), np.ones((32,) * 3))
    fixed.values = np.linspace(1.0, 0.0, len(fixed.values))
    monkeypatch.setattr(refinement.resolution, "fsc", lambda *args, **kwargs: fixed)
    options = dict(iterations=1, seed=2, tolerance=0.0, mask_references=True)
    first = refinement.refine(images, start, **options)
    other = first.halves == 1
    changed = images.copy()
    changed[other] = np.random.default_rng(0).standard_normal(changed[other].shape)
    second = refinement.refine(changed, start, **options)
    np.testing.assert_array_equal(first.halves, second.halves)
    keep = first.halves == 0
    # Equal up to the summation order of multithreaded NUFFTs (1e-8 here, 1e-5 px).
    np.testing.assert_allclose(second.quaternions[keep], first.quaternions[keep], atol=1e-6)
    np.testing.assert_allclose(second.shifts[keep], first.shifts[keep], atol=1e-3)
    assert not np.allclose(second.quaternions[other], first.quaternions[other])


def test_an_image_is_not_matched_against_its_own_noise():
    """Pure noise at random orientations: against its whole half map an image finds its own
    noise there and scores high; against its half's map without its group it scores what the
    best of its candidates gives by chance (0.28 against 0.13 here)."""
    noise = np.random.default_rng(3).standard_normal((200, 24, 24))
    q = rotations.sample_uniform(200, seed=4)
    options = dict(iterations=1, global_iterations=0, soft_iterations=0, rescue_candidates=0,
                   max_shift=0.0, seed=0)
    whole = refinement.refine(noise, q, leave_out_groups=0, **options)
    left_out = refinement.refine(noise, q, leave_out_groups=4, **options)
    assert [entry["left_out_groups"] for entry in (whole.history[-1], left_out.history[-1])] \
        == [0.0, 4.0]
    # max_shift 0: no shift searched (a one-shift window once crashed the sub-pixel step).
    assert not np.any(whole.shifts) and not np.any(left_out.shifts)
    assert np.mean(whole.scores) > 1.6 * np.mean(left_out.scores)


def test_halves_refined_in_turned_frames_are_brought_into_one(problem):
    """The second half starts in a frame turned by 0.08 rad as a whole (as independent halves
    from a blurred start can settle): each half is right on its own, the two together are not,
    until the second half is turned onto the first half's frame."""
    images, q, shifts, _ = problem
    halves = refinement.reconstruction.split_halves(len(q), 0)
    turn = rotations.axis_angle_to_quaternion([1.0, 2.0, -0.5], 0.08)
    start = q.copy()
    start[halves == 1] = rotations.multiply(q[halves == 1], turn)
    options = dict(shifts=shifts, iterations=1, global_iterations=0, seed=0)
    errors = {aligned: alignment.align_physical(
                  refinement.refine(images, start, align_halves=aligned, **options).quaternions,
                  q).mean for aligned in (False, True)}
    assert errors[False] > 0.03  # two frames 0.08 rad apart, aligned as one
    assert errors[True] < 0.01, errors
    turned = refinement.refine(images, start, align_halves=True,
                               **options).history[0]["halves_turn_rad"]
    assert turned == pytest.approx(0.08, abs=0.01)


def test_the_turn_between_two_maps_is_found():
    """A map and a copy turned by a known rotation (scipy's cubic splines, through
    scoring.rotate_map): one estimate undoes most of it (interpolation pulls it towards the
    identity), and estimating again from the turned copy, as refinement does each iteration,
    undoes it to within a milliradian."""
    from cryoem import gold_standard, scoring

    protein = volumes.resolve("4ake", 32).data
    known = alignment.Alignment(np.zeros(0), "physical",
                                rotations.axis_angle_to_quaternion([1.0, 2.0, -0.5], 0.08))
    moving, total, left = scoring.rotate_map(protein, known), np.array([1.0, 0, 0, 0]), []
    for _ in range(3):
        found = gold_standard.frame_between(protein, moving)
        moving = scoring.rotate_map(moving, found)
        total = rotations.multiply(found.transform, total)
        left.append(float(rotations.geodesic_distance(total,
                                                      rotations.conjugate(known.transform))))
    assert left[0] < 0.2 * 0.08 and left[-1] < 1e-3, left
    same = gold_standard.frame_between(protein, protein)
    assert rotations.geodesic_distance(same.transform, [1.0, 0, 0, 0]) < 1e-3


def test_the_shape_mask_follows_an_analytic_blob():
    """A Gaussian blob (σ = 10 Å, 1 Å voxels; the 15 Å low-pass leaves it unchanged, its
    spectrum is e^-8.8 there): its 0.2-of-peak surface is a sphere of radius
    σ·√(2 ln 5) = 17.9 Å, so the mask is 1 out to 17.9 + 6 Å, ½ at 17.9 + 6 + 6 Å and 0 beyond
    17.9 + 18 Å (± a voxel: the distance transform is on the grid).  A second, weaker blob
    below the threshold is left out; an empty map gets no mask (all ones)."""
    from cryoem import gold_standard

    size, sigma = 96, 10.0
    axis = np.arange(size) - size // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    blob = np.exp(-(x**2 + y**2 + z**2) / (2 * sigma**2))
    faint = 0.1 * np.exp(-((x - 36) ** 2 + y**2 + z**2) / (2 * 3.0**2))
    mask = gold_standard.shape_mask(blob + faint, pixel_size=1.0)
    radius = sigma * np.sqrt(2 * np.log(5))
    along = mask[size // 2, size // 2, size // 2:]  # from the centre along +x
    assert np.all(along[: int(radius + 6) - 1] == 1.0)
    assert along[int(round(radius + 12))] == pytest.approx(0.5, abs=0.15)
    assert np.all(along[int(radius + 18) + 2:] == 0.0)  # the faint blob at 36 Å included
    np.testing.assert_array_equal(gold_standard.shape_mask(0 * blob, pixel_size=1.0),
                                  np.ones_like(blob))


def test_masked_references_hold_no_solvent_noise():
    """Half maps of a compact particle (a blob of σ = 3 voxels, 2 Å each, in a 40-voxel box)
    from noisy images at their true poses: unmasked, the references carry the noise out to the
    box's corners; masked, nothing beyond the mask's reach (the low-passed blob's 0.2-of-peak
    surface + 18 Å: under 19 voxels from the centre), and inside the particle they are the
    unmasked ones."""
    from cryoem import gold_standard

    size = 40
    axis = np.arange(size) - size // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    distance = np.sqrt(x**2 + y**2 + z**2)
    particle = np.exp(-distance**2 / (2 * 3.0**2)).astype(np.float32)
    q = rotations.sample_uniform(400, seed=5)
    clean = projection.project(particle, q)
    images = clean + clean.std() * np.random.default_rng(6).standard_normal(clean.shape)
    halves = np.arange(400) % 2
    references = {masked: gold_standard.half_references(
        images, q.copy(), np.zeros((400, 2)), None, halves, None, 2.0, 1e-3, False, None,
        masked=masked)[0] for masked in (False, True)}
    outside, core = distance >= 19, distance <= 3
    for unmasked, masked in zip(references[False], references[True]):
        assert np.abs(unmasked[outside]).max() > 0.02 * unmasked.max()
        assert np.abs(masked[outside]).max() == 0.0
        np.testing.assert_allclose(masked[core], unmasked[core])


def test_noisy_halves_in_one_frame_are_not_turned():
    """Two noisy copies of one map (independent white noise, as two half maps from their
    true poses at low SNR): no turn to find.  A correlation normalised by the turned map's
    norm found 0.03 rad here, because interpolation smooths the noise away as the map turns."""
    from cryoem import gold_standard

    protein = volumes.resolve("4ake", 32).data
    rng = np.random.default_rng(3)
    sigma = 0.5 * protein.std()
    halves = [gold_standard.filter_by_fsc(protein + sigma * rng.standard_normal(protein.shape),
                                          np.full(17, 0.5)) for _ in range(2)]
    found = gold_standard.frame_between(*halves)
    assert rotations.geodesic_distance(found.transform, [1.0, 0, 0, 0]) < 0.01


def test_candidates_and_errors():
    offsets = matching.candidate_offsets(0.3, n_axes=10, n_radii=2)
    assert len(offsets) == 21
    angles = rotations.geodesic_distance(offsets, [1.0, 0, 0, 0])
    np.testing.assert_allclose(np.sort(np.unique(np.round(angles, 9))), [0, 0.15, 0.3])
    with pytest.raises(ValueError):
        refinement.refine(np.zeros((3, 8, 8)), rotations.sample_uniform(2, seed=0))


def test_refine_command(tmp_path, capsys):
    data_path = tmp_path / "d.h5"
    datasets.generate(volumes.gaussian_phantom(32, n_blobs=8, sigma=1.8, seed=4), 300, data_path,
                      max_shift=1.5, seed=1, test_size=300)
    data = datasets.load(data_path)
    axes = np.random.default_rng(1).standard_normal((300, 3))
    start = rotations.multiply(rotations.axis_angle_to_quaternion(axes, 0.2), data.orientations)
    first = tmp_path / "o.h5"
    recovery.save_orientations(first, start, np.arange(300))
    # From the given orientations (this blob phantom has little to match at its 10.7 Å start):
    # the halves share that first guess, and the command says so.
    out = tmp_path / "r.h5"
    assert cli.main(["refine", str(data_path), "--orientations", str(first), "--out", str(out),
                     "--iterations", "4", "--initial-resolution", "0", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "E_OR" in text and "(not independent" in text
    q, indices, attrs = recovery.load_orientations(out)
    assert attrs["e_or_rad"] < attrs["e_or_unrefined_rad"]
    assert attrs["shifts"].shape == (300, 2)
    assert attrs["halfmap_independence"].startswith("not independent")
    # The default: each half apart from the first guess's map low-passed (here to 32/3 Å).
    assert cli.main(["refine", str(data_path), "--orientations", str(first), "--out",
                     str(tmp_path / "apart.h5"), "--iterations", "1", "--start-iterations", "2",
                     "--quiet"]) == 0
    assert "(independent: each half refined" in capsys.readouterr().out
    _, _, apart = recovery.load_orientations(tmp_path / "apart.h5")
    assert "start low-passed to 10.7 Å" in apart["halfmap_independence"]
    # A low-passed start needs a global search: the error says how to do without, and nothing
    # is written.
    assert cli.main(["refine", str(data_path), "--orientations", str(first), "--out",
                     str(tmp_path / "bad.h5"), "--global-iterations", "0", "--quiet"]) != 0
    assert "--initial-resolution 0" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()
    assert cli.main(["reconstruct", str(data_path), "--orientations", str(out), "--out",
                     str(tmp_path / "m.mrc"), "--quiet"]) == 0
    assert "estimated shifts" in capsys.readouterr().out


@pytest.mark.parametrize("start_offset", [0.0, 0.25, -0.25])
def test_local_match_finds_sub_pixel_shifts(problem, start_offset):
    """Against the true map at the true orientations, the shift search lands on the
    projector's sub-pixel shift, from the truth and from half a grid step (0.25 px) away:
    the parabola through the correlation's peak must use the peak's spatial neighbours."""
    phantom = volumes.gaussian_phantom(32, n_blobs=8, sigma=1.8, seed=4)
    images, q, shifts, _ = problem
    band = matching.Band(32, 15.0)
    spectra = np.fft.rfft2(np.fft.ifftshift(images[:40], axes=(-2, -1)))[:, band.mask]
    start = np.round(shifts[:40] * 2) / 2 + start_offset  # on the half-pixel grid, then off it
    identity = np.array([[1.0, 0.0, 0.0, 0.0]])
    found = start
    for _ in range(3):
        _, found, _ = matching.local_match(phantom.data, spectra, q[:40], found, None, band,
                                           identity, 2.0, 16)
    assert np.max(np.abs(found - shifts[:40])) < 0.05


def test_symmetric_references_refine_a_symmetric_particle_better():
    """A C2 particle whose axis points anywhere in the poses' frame (the whole set turned, as an
    ab initio frame is): with the group imposed on each half's references about the axes found
    in that half, noisy images end closer to their poses than against the C1 references
    (0.120 against 0.127 rad here), and the history says how symmetric the halves were."""
    phantom = volumes.gaussian_phantom(32, symmetry="C2", n_blobs=8, sigma=1.8, seed=4)
    q = rotations.sample_uniform(200, seed=1)
    images, _ = projection.add_noise(projection.project(phantom.data, q), 1.0, seed=5)
    frame = rotations.sample_uniform(1, seed=9)[0]  # the poses' own frame: axes anywhere
    in_frame = rotations.multiply(q, frame)
    axes = np.random.default_rng(0).standard_normal((200, 3))
    start = rotations.multiply(rotations.axis_angle_to_quaternion(axes, 0.15), in_frame)
    options = dict(iterations=5, global_iterations=0, rescue_candidates=0, seed=0)
    errors = {}
    for symmetry in ("C1", "C2"):
        result = refinement.refine(images, start, symmetry=symmetry, **options)
        errors[symmetry] = alignment.align_physical(result.quaternions, q, "C2").mean
        scores = [entry["symmetry_score"] for entry in result.history]
        assert np.all(np.isnan(scores)) if symmetry == "C1" else min(scores) > 0.95
    assert errors["C2"] < errors["C1"] - 0.004, errors


def _entries(values, kinds):
    """History entries with the given half-map resolutions; kinds: g(lobal), s(oft), l(ocal)."""
    return [{"halfmap_fsc0143_angstrom": value, "global": float(kind == "g"),
             "soft": float(kind == "s")} for value, kind in zip(values, kinds)]


def test_the_plateau_rule_reads_the_hard_local_iterations_of_the_phase():
    """Hand-worked: 1HVR at SNR 1/16 with C2 declared (the `cb865fb` run's history: half-map
    resolutions in Å) plateaus at its third hard local iteration; a gain of 1 % or more in the
    last two does not; a global pass starts a new phase."""
    run = _entries([np.nan, 4.53, 3.97, 3.68, 3.54, 3.33, 3.32, 3.33, 3.32], "ggsssslll")
    assert not refinement._plateaued(run[:8], 2, 0.01)  # two hard ones: nothing earlier
    assert refinement._plateaued(run, 2, 0.01)  # 3.32 is not 1 % finer than 3.32
    assert not refinement._plateaued(run, 0, 0.01)  # off
    gaining = _entries([3.40, 3.37, 3.35], "lll")
    assert refinement._plateaued(gaining, 2, 0.02)  # 3.35 > 0.98 * 3.40
    assert not refinement._plateaued(gaining, 2, 0.01)  # 3.35 < 0.99 * 3.40
    rescued = run + _entries([3.35, 3.40, 3.30], "gll")
    assert not refinement._plateaued(rescued, 2, 0.01)  # two since the rescue: too few
    assert not refinement._plateaued(rescued + _entries([3.31], "l"), 2, 0.01)  # 3.30 gained
    assert refinement._plateaued(rescued + _entries([3.31, 3.30], "ll"), 2, 0.01)


def test_refinement_stops_on_a_plateau_only_where_the_fsc_could_show_a_gain():
    """Wired into refine: a rule that always finds a plateau stops the local iterations after
    the second hard one when any move counts as jitter; when none does, it stops noisy images
    (their FSC falls below 0.143 inside the box) but not noiseless ones of a protein (its FSC
    stays above 0.143 to the box's edge, where it cannot show what a finer grid gains)."""
    volume = volumes.resolve("4ake", 32)
    q = rotations.sample_uniform(200, seed=7)
    images = projection.project(volume.data, q, pixel_size=volume.voxel_size)
    start = rotations.multiply(rotations.axis_angle_to_quaternion(
        np.random.default_rng(1).standard_normal((200, 3)), 0.1), q)
    options = dict(iterations=5, soft_iterations=1, global_iterations=0, rescue_candidates=0,
                   plateau=1, plateau_gain=1.0, pixel_size=volume.voxel_size)
    stopped = refinement.refine(images, start, plateau_jitter=0.0, **options)
    assert [entry["soft"] for entry in stopped.history] == [1.0, 0.0, 0.0]
    ran = refinement.refine(images, start, plateau_jitter=1e9, **options)
    assert len(ran.history) == 5
    assert all(entry["fsc_reaches_edge"] for entry in ran.history)
    noisy, _ = projection.add_noise(images, 0.25, seed=5)
    resolved = refinement.refine(noisy, start, plateau_jitter=1e9, **options)
    assert not any(entry["fsc_reaches_edge"] for entry in resolved.history)
    assert [entry["soft"] for entry in resolved.history] == [1.0, 0.0, 0.0]
