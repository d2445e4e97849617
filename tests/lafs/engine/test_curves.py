import json

from lafs.engine.curves import CURVE_FILE, accuracy_keys, plot_learning_curve


def test_accuracy_keys_leave_out_spreads_and_running_bests():
    records = [
        {"step": 10, "loss": 3.0},
        {"step": 20, "lfw_accuracy": 0.6, "mean_accuracy": 0.6, "best_mean_accuracy": 0.6, "lfw_accuracy_std": 0.1},
        {"step": 40, "lfw_accuracy": 0.7, "cfp_accuracy": None, "mean_accuracy": 0.7},
    ]
    assert accuracy_keys(records) == ["lfw_accuracy", "mean_accuracy"]


def test_plot_needs_a_validation_and_draws_one_png(tmp_path):
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert plot_learning_curve(tmp_path) is None and not (tmp_path / CURVE_FILE).exists()
    with (tmp_path / "log.jsonl").open("a") as log:
        for step, accuracy in ((5, 0.55), (10, 0.62)):
            log.write(json.dumps({"step": step, "set_accuracy": accuracy, "mean_accuracy": accuracy}) + "\n")
    path = plot_learning_curve(tmp_path)
    assert path == tmp_path / CURVE_FILE and path.read_bytes()[:4] == b"\x89PNG"
