"""The curve names and files: where a curve is written and how it reads back."""

from forgetting.curves import TRAIN_PENALTY, curve_file, read_curve


def test_read_curve_of_a_written_and_a_missing_curve(tmp_path):
    path = curve_file(tmp_path / "adapt", TRAIN_PENALTY)
    assert path == tmp_path / "adapt" / "plots" / "metrics" / "train" / "penalty.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("timestamp\tstep\tpenalty\n1\t10\t0.5\n2\t20\t0.25\n")
    assert read_curve(tmp_path / "adapt", TRAIN_PENALTY) == ([10, 20], [0.5, 0.25])
    assert read_curve(tmp_path / "pretrain", TRAIN_PENALTY) == ([], [])
