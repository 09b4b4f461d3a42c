"""The curves as training writes them: every curve the figures and dvc.yaml read is what a Trainer log key becomes,
and a checkpoint's copy of the curves comes back whole on resume."""

import shutil

from forgetting.curves import CURVES, TRAIN_PENALTY, curve_file, dev_curve, read_curve
from forgetting.training.live import live_metric, log_key, restore_curves, save_curves


def test_every_curve_is_a_logged_dvclive_metric_of_its_log_key():
    for curve in CURVES:
        assert live_metric(log_key(curve)) == (curve, True)
    assert log_key(dev_curve("nl", "wer")) == "eval_nl_wer"  # what the Trainer logs for its dev set "nl"


def test_trainer_keys_for_timings_and_totals_are_not_logged():
    assert live_metric("loss") == ("train/loss", True)
    for key in ("train_runtime", "train_samples_per_second", "eval_nl_runtime", "eval_de_samples_per_second", "epoch",
                "total_flos", "train_loss"):
        assert live_metric(key)[1] is False, key


def test_the_curves_of_a_checkpoint_come_back_whole_on_resume(tmp_path):
    live, checkpoint = tmp_path / "adapt", tmp_path / "checkpoints" / "checkpoint-20"
    path = curve_file(live, TRAIN_PENALTY)
    path.parent.mkdir(parents=True)
    path.write_text("step\tpenalty\n10\t0.5\n20\t0.25\n")
    checkpoint.mkdir(parents=True)
    save_curves(live, checkpoint)
    path.write_text("step\tpenalty\n10\t0.5\n20\t0.25\n30\t0.1\n")  # logged after the checkpoint, then killed
    restore_curves(checkpoint, live)
    assert read_curve(live, TRAIN_PENALTY) == ([10, 20], [0.5, 0.25])
    shutil.rmtree(live)  # what `dvc repro` does to a stage's outputs before it reruns the stage
    restore_curves(checkpoint, live)
    assert read_curve(live, TRAIN_PENALTY) == ([10, 20], [0.5, 0.25])
