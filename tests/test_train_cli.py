"""`python -m tinymoe.train`: --help documents every flag (one per TrainConfig field), a few steps
run on the CPU and leave a checkpoint and a history, a mismatched --resume and bad settings name the field."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinymoe.train import TrainConfig, load_checkpoint
from tinymoe.train.__main__ import build_parser, main
from train_setup import one_thread

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)

ROOT = Path(__file__).resolve().parents[1]
FEW_STEPS = ["--batch-size", "4", "--seq-len", "16", "--eval-every", "2", "--eval-batches", "1",
             "--warmup-steps", "1", "--sample", "10", "--no-progress"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "tinymoe.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_help_lists_every_flag_with_its_meaning(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text, f"{flag} is missing from --help"
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no real help text"
    destinations = {action.dest for action in parser._actions}
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in destinations]
    assert not missing, f"TrainConfig fields without a command-line flag: {missing}"


@pytest.mark.slow
def test_a_few_steps_on_the_cpu_write_a_checkpoint_and_a_history(tmp_path):
    checkpoint, history = tmp_path / "run.pt", tmp_path / "history.json"
    done = _run("--steps", "3", "--checkpoint", str(checkpoint), "--history", str(history), *FEW_STEPS)
    assert done.returncode == 0, f"the CLI failed:\n{done.stdout}\n{done.stderr}"
    assert "val_loss" in done.stdout and "tokens/s" in done.stdout, done.stdout
    rows = json.loads(history.read_text())["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[-1]["val_loss"] is not None
    assert load_checkpoint(checkpoint)["step"] == 3



def test_resume_with_another_lr_is_refused_naming_it(tmp_path, capsys):
    checkpoint = tmp_path / "run.pt"
    assert main(["--steps", "2", "--checkpoint", str(checkpoint), *FEW_STEPS]) == 0
    assert main(["--steps", "2", "--checkpoint", str(checkpoint), "--resume", "--lr", "0.01", *FEW_STEPS]) == 2
    err = capsys.readouterr().err
    assert "train.lr: checkpoint has 0.003, this run has 0.01" in err, f"the refusal should name lr:\n{err[-2000:]}"


def test_dense_flag_trains_the_dense_baseline(capsys):
    assert main(["--steps", "1", "--dense", *FEW_STEPS]) == 0
    out = capsys.readouterr().out
    assert "model: dense" in out, out


@pytest.mark.parametrize("args, field", [(["--lr", "-1"], "lr=-1.0"), (["--config", "nope"], "config='nope'"),
                                         (["--device", "gpu7"], "device='gpu7'")])
def test_bad_settings_exit_with_the_field_named(args, field, capsys):
    assert main(["--steps", "1", *args, *FEW_STEPS]) == 2
    err = capsys.readouterr().err
    assert field in err, f"expected an error naming {field!r}:\n{err[-1500:]}"


@pytest.mark.slow
def test_ctrl_c_leaves_a_readable_checkpoint(tmp_path):
    import signal
    import time

    checkpoint = tmp_path / "run.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.Popen([sys.executable, "-m", "tinymoe.train", "--steps", "100000", "--checkpoint", str(checkpoint),
                            "--checkpoint-every", "2", *FEW_STEPS], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert checkpoint.exists(), f"no checkpoint appeared: {run.poll()=}"
        time.sleep(0.5)                                               # let it get into later steps and writes
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130 and "interrupted; the last checkpoint is in" in err, (run.returncode, err[-1500:])
    state = load_checkpoint(checkpoint)
    assert state["step"] >= 2 and len(state["history"]["rows"]) == state["step"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"], "a temporary file was left behind"
