"""The whole pipeline on a tiny run: files, metrics, failure, resumption."""

import dataclasses
import json

import numpy as np
import pytest

from cryoem import cli, pipeline

# The halves start from the first guess (initial_resolution=None): a 24 Å phantom has nothing
# to match at 8 Å; the gold-standard start is tested on a protein (tests/test_ab_initio.py).
TINY = dict(volume="phantom", size=24, n_projections=400, test_size=120, estimator="exact",
            steps=60, refine_iterations=2, initial_resolution=None)


def tiny_config(**changes):
    return pipeline.PipelineConfig(**{**TINY, **changes})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    return folder, pipeline.run(tiny_config(), folder, progress=False, report=lambda _: None)


def test_a_run_writes_every_file_and_key(finished):
    folder, metrics = finished
    for name in ("data.h5", "distances.h5", "orientations.h5", "orientations_from_distances.h5",
                 "map.mrc", "map_aligned_to_truth.mrc", "map_true_orientations.mrc", "map_half1.mrc", "map_half2.mrc",
                 "relion/particles.star", "relion/particles.mrcs", "figures/fsc.png",
                 "figures/map.png", "figures/dp_dq.png", "metrics.json"):
        assert (folder / name).exists(), name
    assert set(pipeline.METRIC_KEYS) <= set(metrics)
    assert metrics["e_or_unrefined_rad"] < 0.05  # after the frame step, before refinement
    assert metrics["e_or_o4_rad"] < 1e-3 and metrics["e_or_rad"] < 0.05
    assert (folder / "orientations_refined.h5").exists()
    assert metrics["e_or_before_frame_rad"] > metrics["e_or_rad"]
    assert metrics["resolution_fsc05_angstrom"] < 3.0  # pixel 1 Å: Nyquist is 2 Å
    assert set(metrics["timings_s"]) == {name for name, _ in pipeline.STAGES}
    assert metrics["config_hash"] == tiny_config().digest()
    # The exact estimator is an oracle: it reads the true orientations, and says so.
    assert metrics["truth_used"] == {"distances": ["orientations"]}
    assert metrics["scored_against"] == "the ground truth"
    assert set(metrics["provenance"]) == {"git_commit", "git_dirty", "package_version",
                                          "command", "machine"}


def test_the_primary_map_is_in_the_estimates_own_frame(finished):
    """map.mrc is what a user without the truth gets; only the aligned copy matches the truth."""
    from cryoem import datasets, volumes

    folder, _ = finished
    truth = datasets.load(folder / "data.h5", images=False).volume
    own = volumes.load_map(folder / "map.mrc").data
    aligned = volumes.load_map(folder / "map_aligned_to_truth.mrc").data

    def correlation(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert correlation(aligned, truth) > 0.9
    # The phantom's frame is arbitrary for recovery: the own-frame map is rotated away.
    assert correlation(own, truth) < correlation(aligned, truth) - 0.2


def test_an_interrupted_run_resumes_to_the_same_metrics(finished, tmp_path, monkeypatch):
    _, reference = finished
    calls = {"n": 0}
    original = dict(pipeline.STAGES)

    def failing(run):
        calls["n"] += 1
        raise RuntimeError("power cut")

    monkeypatch.setattr(pipeline, "STAGES", tuple(
        (name, failing if name == "reconstruct" else stage) for name, stage in pipeline.STAGES))
    with pytest.raises(RuntimeError, match="stage 'reconstruct' failed: power cut"):
        pipeline.run(tiny_config(), tmp_path, progress=False, report=lambda _: None)
    record = json.loads((tmp_path / "pipeline.json").read_text())
    assert record["finished"] == ["generate", "train", "distances", "recover", "resolve", "ab_initio",
                                  "initial_map", "refine"]
    assert record["failed"]["stage"] == "reconstruct"
    refined = (tmp_path / "orientations_refined.h5").read_bytes()
    monkeypatch.setattr(pipeline, "STAGES", tuple(original.items()))
    lines = []
    resumed = pipeline.run(tiny_config(), tmp_path, progress=False, report=lines.append)
    assert "[generate] already done" in lines and "[refine] already done" in lines
    # The finished stages' outputs are reused as they are, not recomputed.
    assert (tmp_path / "orientations_refined.h5").read_bytes() == refined
    for key in ("e_or_rad", "e_or_o4_rad", "l_or", "resolution_fsc05_angstrom",
                "resolution_halfmap_fsc0143_angstrom"):
        # The same as the uninterrupted run up to the NUFFTs' multithreaded summation order,
        # which can flip a refinement's choice under load (seen: 0.4 % on the half-map FSC).
        assert resumed[key] == pytest.approx(reference[key], rel=2e-2), key


def test_other_parameters_are_refused(finished):
    folder, _ = finished
    with pytest.raises(ValueError, match="other parameters.*seed"):
        pipeline.run(tiny_config(seed=3), folder, progress=False, report=lambda _: None)


def test_a_run_from_before_a_field_existed_resumes(finished, tmp_path):
    """A record without a later field resumes when the config does what that run did."""
    import shutil

    folder, reference = finished
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    record = json.loads((old / "pipeline.json").read_text())
    del record["config"]["mask_references"]  # the field came after this run, which did not mask
    record["config_hash"] = "0123456789abcdef"  # the hash of the fields it had then
    (old / "pipeline.json").write_text(json.dumps(record))
    refused = r"other parameters \(mask_references: False there, True now\)"
    with pytest.raises(ValueError, match=refused):
        pipeline.run(tiny_config(mask_references=True), old, progress=False,
                     report=lambda _: None)
    lines = []
    unmasked = tiny_config(mask_references=False)
    resumed = pipeline.run(unmasked, old, progress=False, report=lines.append)
    assert lines == [f"[{name}] already done" for name, _ in pipeline.STAGES]
    assert resumed["e_or_rad"] == reference["e_or_rad"]
    rewritten = json.loads((old / "pipeline.json").read_text())
    assert rewritten["config_hash"] == unmasked.digest() != record["config_hash"]
    assert rewritten["config"]["mask_references"] is False


def test_changed_parameters_reads_a_missing_field_as_what_the_run_did():
    config = tiny_config(mask_references=False)
    recorded = json.loads(json.dumps(dataclasses.asdict(config)))
    assert pipeline.changed_parameters(config, recorded) == []
    assert pipeline.changed_parameters(tiny_config(seed=3, snr=1.0, mask_references=False),
                                       recorded) == ["seed", "snr"]
    del recorded["mask_references"]
    recorded["a_field_since_removed"] = 1
    assert pipeline.changed_parameters(config, recorded) == []
    assert pipeline.changed_parameters(tiny_config(mask_references=True), recorded) == [
        "mask_references"]


def test_references_are_masked_unless_turned_off():
    """The mask is the default of the pipeline and of `cryoem refine`; ``--no-mask-references``
    is the ablation, and a run folder from before the mask existed reads as unmasked."""
    parser = cli.build_parser()
    for command in (["pipeline"], ["refine", "d.h5", "--orientations", "o.h5", "--out", "r.h5"]):
        assert parser.parse_args(command).mask_references is True
        assert parser.parse_args(command + ["--no-mask-references"]).mask_references is False
    assert pipeline.PipelineConfig().mask_references
    recorded = {k: v for k, v in dataclasses.asdict(tiny_config()).items()
                if k != "mask_references"}
    assert pipeline.changed_parameters(tiny_config(), recorded) == ["mask_references"]
    assert pipeline.changed_parameters(tiny_config(mask_references=False), recorded) == []


def test_pipeline_command_prints_a_summary(tmp_path, capsys):
    argv = ["pipeline", "--volume", "phantom", "--size", "24", "--n-projections", "300",
            "--test-size", "100", "--estimator", "perturbed", "--sigma2", "0.05", "--steps", "50",
            "--no-refine", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "E_OR physical, final" in out and "FSC 0.5" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["estimator"] == "perturbed" and metrics["l_de_test"] > 0
    assert metrics["e_or_unrefined_rad"] is None
    assert cli.main(argv[:-3] + ["--seed", "1", "--out", str(tmp_path)]) == 2
    assert "other parameters" in capsys.readouterr().err


def test_the_training_budget_grows_as_the_snr_falls():
    """`auto` trains longer below SNR 1; seconds and `none` (no budget) pass through the CLI."""
    from cryoem.pipeline_first_guess import training_budget

    noiseless, snr_1, snr_16 = (training_budget("auto", snr) for snr in (np.inf, 1.0, 1 / 16))
    assert noiseless == snr_1 and snr_16 > snr_1 > 0
    assert training_budget(600, 1 / 16) == 600 and training_budget(None, 1 / 16) is None
    with pytest.raises(ValueError, match="train_seconds"):
        training_budget(-5, 1.0)
    parser = cli.build_parser()
    for text, expected in (("auto", "auto"), ("none", None), ("600", 600.0)):
        args = parser.parse_args(["pipeline", "--train-seconds", text])
        assert args.train_seconds == expected
    assert parser.parse_args(["pipeline"]).train_seconds == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["pipeline", "--train-seconds", "0"])


def test_the_training_sees_more_images_as_the_snr_falls_unless_given():
    from cryoem.pipeline_first_guess import LOW_SNR_NETWORK, training_epochs
    from cryoem.training import TrainingConfig

    noiseless, snr_1, snr_16 = (training_epochs(None, snr) for snr in (np.inf, 1.0, 1 / 16))
    assert noiseless == snr_1 == 200
    # below SNR 1 fewer epochs of larger batches: more images in all
    assert snr_16 * LOW_SNR_NETWORK["batch_size"] > snr_1 * TrainingConfig().batch_size
    assert training_epochs(7, 1 / 16) == 7
    with pytest.raises(ValueError, match="epochs"):
        training_epochs(0, 1.0)
    assert cli.build_parser().parse_args(["pipeline"]).epochs is None


@pytest.mark.parametrize("training", ["fixed", pytest.param("rendered", marks=pytest.mark.slow)])
def test_the_learned_pipeline_end_to_end(training, tmp_path):
    """Train a tiny network, recover, refine, reconstruct: every key, and the truth it read."""
    # Rendered below SNR 1: the curriculum and the quarter turns are the defaults there.
    config = tiny_config(estimator="learned", training=training, epochs=2, train_seconds=None,
                         input_size=None, snr=0.5 if training == "rendered" else float("inf"))
    try:
        metrics = pipeline.run(config, tmp_path, progress=False, report=lambda _: None)
    except RuntimeError as error:  # two epochs may not resolve the frame: the record says so
        assert "stage 'resolve' failed" in str(error)
        metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(pipeline.METRIC_KEYS) <= set(metrics)
    assert (tmp_path / "model" / "model.keras").exists()
    assert metrics["training"] == training and metrics["train_budget_s"] is None
    assert metrics["truth_used"] == {"train": pipeline.TRAINING_TRUTH[training]}
    assert "volume" in metrics["truth_used"]["train"] or training == "fixed"
    assert 0 <= metrics["l_de_test"] < 10 and metrics["e_or_o4_rad"] >= 0
    model_config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert model_config["mode"] == training
    noisy_defaults = (model_config["turns"], model_config["snr_start"], model_config["width"],
                      model_config["schedule"])
    assert noisy_defaults == ((4, 16.0, 1.5, "cosine") if training == "rendered" else
                              (1, None, 1.0, "plateau"))
    assert model_config["provenance"]["package_version"] == metrics["provenance"]["package_version"]
    summary = pipeline.summary(metrics)
    assert "train: " in summary
    if training == "rendered":
        assert "supervised on the true map" in summary
