"""The generic checkpoint halves both trainers build on (neural_mesh.checkpoints)."""

import json

import pytest
import torch

from neural_mesh.checkpoints import (
    LATEST_FILE,
    TRAINER_FILE,
    CheckpointError,
    optimizer_state,
    optimizer_tensors,
    read_checkpoint,
    read_json,
    read_tensors,
    write_checkpoint,
    write_json_atomic,
)


def _writer(value: float):
    from safetensors.torch import save_file

    def write(work):
        save_file({"w": torch.full((2, 3), value)}, str(work / "weights.safetensors"))
        (work / "extra.json").write_text(json.dumps({"value": value}))

    return write


def _save(run, step, keep=2, value=None):
    trainer = {"format": "toy_checkpoint", "format_version": 3, "note": "hello"}
    return write_checkpoint(run, step, keep, _writer(float(step) if value is None else value), trainer)


def test_written_checkpoint_reads_back_with_its_trainer_entries_and_checksums(tmp_path):
    ckpt = _save(tmp_path / "run", 7)
    assert ckpt == tmp_path / "run" / "checkpoints" / "step_00000007"
    assert json.loads((tmp_path / "run" / LATEST_FILE).read_text()) == {
        "step": 7, "checkpoint": "checkpoints/step_00000007"}

    for where in (tmp_path / "run", ckpt):  # a run directory or the checkpoint itself
        found, info = read_checkpoint(where, "toy_checkpoint", 3)
        assert found == ckpt
        assert info["step"] == 7 and info["note"] == "hello"
        assert sorted(info["files"]) == ["extra.json", "weights.safetensors"]
    assert torch.equal(read_tensors(ckpt / "weights.safetensors")["w"], torch.full((2, 3), 7.0))
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_latest_moves_on_and_only_the_last_keep_checkpoints_stay(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run, step, keep=2)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step_00000003", "step_00000004"]
    ckpt, info = read_checkpoint(run, "toy_checkpoint", 3)
    assert info["step"] == 4 and ckpt.name == "step_00000004"
    # writing the same step again replaces it
    _save(run, 4, keep=2, value=-1.0)
    assert torch.equal(read_tensors(run / "checkpoints" / "step_00000004" / "weights.safetensors")["w"],
                       torch.full((2, 3), -1.0))


def test_a_failing_writer_leaves_the_previous_checkpoint_in_charge(tmp_path):
    run = tmp_path / "run"
    _save(run, 1)

    def broken(work):
        (work / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_checkpoint(run, 2, 2, broken, {"format": "toy_checkpoint", "format_version": 3})
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
    assert read_checkpoint(run, "toy_checkpoint", 3)[1]["step"] == 1


def test_bad_checkpoints_are_one_line_errors_naming_the_file(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="no such run or checkpoint directory"):
        read_checkpoint(run, "toy_checkpoint", 3)
    run.mkdir()
    with pytest.raises(CheckpointError, match=f"not a checkpoint \\(no {TRAINER_FILE} or {LATEST_FILE}\\)"):
        read_checkpoint(run, "toy_checkpoint", 3)

    ckpt = _save(run, 5)
    with pytest.raises(CheckpointError, match="not a 'other' checkpoint"):
        read_checkpoint(run, "other", 3)
    with pytest.raises(CheckpointError, match="unsupported format_version 3"):
        read_checkpoint(run, "toy_checkpoint", 4)

    (ckpt / "extra.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"extra\.json: checksum does not match"):
        read_checkpoint(run, "toy_checkpoint", 3)
    (ckpt / "extra.json").unlink()
    with pytest.raises(CheckpointError, match=r"extra\.json: missing \(listed in trainer\.json\)"):
        read_checkpoint(run, "toy_checkpoint", 3)

    (run / LATEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"latest\.json: not valid JSON"):
        read_checkpoint(run, "toy_checkpoint", 3)
    write_json_atomic(run / LATEST_FILE, {"checkpoint": "checkpoints/step_00000009"})
    with pytest.raises(CheckpointError, match="points to .*step_00000009, which is not a checkpoint"):
        read_checkpoint(run, "toy_checkpoint", 3)

    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: cannot read safetensors"):
        read_tensors(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"gone\.json: missing \(the run's config\)"):
        read_json(tmp_path / "gone.json", "the run's config")


def test_optimizer_state_round_trips_through_tensors_and_json(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()

    tensors, groups = optimizer_tensors(opt.state_dict())
    assert set(tensors) == {f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}
    save_file(tensors, str(tmp_path / "opt.safetensors"))
    write_json_atomic(tmp_path / "groups.json", groups)
    state = optimizer_state(tmp_path / "opt.safetensors", read_json(tmp_path / "groups.json", "groups"))

    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = torch.optim.Adam(twin_params, lr=0.5)
    twin.load_state_dict(state)
    assert twin.param_groups[0]["lr"] == 0.01
    for opt_, ps in ((opt, params), (twin, twin_params)):  # one more step: same result
        opt_.zero_grad()
        sum((p ** 2).sum() for p in ps).backward()
        opt_.step()
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)

    save_file({"weird": torch.zeros(1)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor 'weird'"):
        optimizer_state(tmp_path / "odd.safetensors", groups)
