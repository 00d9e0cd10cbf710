"""Issue 15 item 3: a finetune run's curves, subset table and diagnosis describe the same model.

The reported run: 76 training images of 3 colour classes, finetune mode with 1 block, 4 epochs, the real
EfficientNet-Lite0. Before the fix, the curve's last train point (measured in training mode, on augmented
images, while the weights changed) read loss 0.009 / accuracy 1.0, while the subset table (the kept model in
eval mode) read loss 0.389 / accuracy 81.6%: batch-norm running statistics lagging behind a few steps.
"""

from __future__ import annotations

import pytest

from tests.training.conftest import colour_split, train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fresh_database", ["sqlite"], indirect=True)
def test_the_last_curve_point_is_the_subset_table_of_the_kept_model(fresh_database, tmp_path, monkeypatch) -> None:
    with colour_split(fresh_database, tmp_path / "data", monkeypatch, per_class=42) as env:
        client, engine, dataset_id, split_id = env
        run = train(
            client,
            engine,
            dataset_id,
            split_id,
            mode="finetune",
            finetune_blocks=1,
            epochs=4,
            lr=1e-4,
            batch_size=16,
            patience=3,
        )
    assert run["metrics"]["train"]["count"] == 76 and run["config"]["backbone"] == "efficientnet_lite0"
    history = run["history"]
    assert len(history) == 4
    last = history[-1]
    train_row, dev_row = run["metrics"]["train"], run["metrics"]["dev"]
    assert last["train_loss"] == pytest.approx(train_row["loss"], abs=2e-3)
    assert last["train_accuracy"] == pytest.approx(train_row["accuracy"], abs=1e-9)
    assert last["dev_loss"] == pytest.approx(dev_row["loss"], abs=2e-3)
    assert last["dev_accuracy"] == pytest.approx(dev_row["accuracy"], abs=1e-9)
    # The kept model is the last epoch's (dev loss still falling), and the curve says which one it keeps.
    assert [point["kept"] for point in history] == [False, False, False, True]
    # The diagnosis reads the same errors as the table.
    gaps = run["diagnosis"]["gaps"]
    assert gaps["avoidable_bias"] == pytest.approx(train_row["error"] - run["diagnosis"]["human_error"])
