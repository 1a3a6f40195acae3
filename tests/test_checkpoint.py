"""Atomic checkpoints: round trip, truncation detected, previous kept."""
import pytest
import torch

from repalign.training.checkpoint import CheckpointError, load_checkpoint, load_latest, prev_path, save_checkpoint


def test_round_trip_and_previous(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.arange(3)}, p)
    save_checkpoint({"step": 2, "w": torch.arange(4)}, p)
    assert load_checkpoint(p)["step"] == 2
    assert load_checkpoint(prev_path(p))["step"] == 1
    assert not list(tmp_path.glob(".*tmp*"))


def test_truncated_is_detected_and_previous_used(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.randn(100)}, p)
    save_checkpoint({"step": 2, "w": torch.randn(100)}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(p)
    obj, used, problems = load_latest(p)
    assert obj["step"] == 1 and used == prev_path(p) and "truncated" in problems[0]


def test_corrupt_without_sidecar(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


class Evil:
    pass


def test_weights_only_rejects_arbitrary_objects(tmp_path):
    p = tmp_path / "e.pt"
    save_checkpoint({"x": Evil()}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
