"""Checkpoints of tinymoe.train: resuming equals not stopping, a mismatched checkpoint is refused
with the differing fields named, and an interrupt never leaves a half-written file."""
from __future__ import annotations

import pytest
import torch

from tinymoe.train import CheckpointMismatch, load_checkpoint, train
from train_setup import one_thread, same_rows, small_data, small_model, small_train_config

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def data():
    return small_data()


def _interrupt_at(step: int):
    def callback(row, model):
        if row["step"] == step:
            raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("moe", [dict(capacity_factor=1.0), dict(router="noisy_topk")],
                         ids=["capacity_drops", "noisy_router_uses_rng"])
def test_resumed_run_equals_uninterrupted_run(data, tmp_path, moe):
    config = small_train_config(accumulation=2)
    model = small_model(data.vocab_size, **moe)
    uninterrupted = train(model, data, config)

    path = tmp_path / "run.pt"
    config = small_train_config(accumulation=2, checkpoint_path=str(path))
    with pytest.raises(KeyboardInterrupt):
        train(small_model(data.vocab_size, **moe), data, config, callbacks=[_interrupt_at(6)])
    resumed_model = small_model(data.vocab_size, seed=99, **moe)       # other weights: the checkpoint must replace them
    resumed = train(resumed_model, data, config, resume=True)

    problems = same_rows(uninterrupted.rows, resumed.rows)
    assert not problems, "the resumed run differs from the uninterrupted one:\n" + "\n".join(problems[:10])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), f"final weight {name} differs after resuming"


def test_interrupted_run_leaves_a_readable_checkpoint_of_its_last_step(data, tmp_path):
    path = tmp_path / "run.pt"
    model = small_model(data.vocab_size)
    with pytest.raises(KeyboardInterrupt):
        train(model, data, small_train_config(checkpoint_path=str(path)), callbacks=[_interrupt_at(4)])
    state = load_checkpoint(path)
    assert state["step"] == 5, f"checkpoint at step {state['step']}, expected the 5 completed steps"
    assert len(state["history"]["rows"]) == 5
    assert state["data"]["drawn"] == 5, "the data position should count the 5 batches of the completed steps"
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), f"checkpointed {name} is not the model's weight"
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"], "a temporary file was left behind"


def test_interrupt_while_writing_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    config = small_train_config(checkpoint_path=str(path), checkpoint_every=4)
    train(small_model(data.vocab_size), data, config.__class__(**(config.to_dict() | {"steps": 4})))
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_interrupt(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(len(before) // 2)
        f.truncate()                                                    # a half-written file ...
        raise KeyboardInterrupt                                         # ... when Ctrl-C arrives

    monkeypatch.setattr(torch, "save", save_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(small_model(data.vocab_size), data, small_train_config(checkpoint_path=str(path),
                                                                      checkpoint_every=4, steps=8))
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before, "the checkpoint on disk changed although no write finished"
    assert load_checkpoint(path)["step"] == 4
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "run.pt"]
    assert not leftovers, f"temporary files left behind: {leftovers}"


class _CtrlCWhilePickled:
    """Pickles as an empty OrderedDict, but sends this process a real SIGINT while torch.save is
    in the middle of writing it: Ctrl-C at the worst moment, on purpose."""
    def __reduce__(self):
        import collections
        import os
        import signal
        os.kill(os.getpid(), signal.SIGINT)
        return collections.OrderedDict, ()


def test_ctrl_c_in_the_middle_of_a_write_waits_for_a_whole_file(tmp_path):
    """A real SIGINT inside torch.save used to break its zip writer, and the RuntimeError of its
    clean-up ("unexpected pos") hid the interrupt. Now the write finishes, the file is whole and
    new, and then the KeyboardInterrupt arrives."""
    from tinymoe.train.checkpoint import save_checkpoint
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(4)})
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "weights": torch.arange(100_000.0), "probe": _CtrlCWhilePickled()})
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["weights"], torch.arange(100_000.0)), \
        "the checkpoint being written when Ctrl-C came should have been completed"
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"], "a temporary file was left behind"
    import signal
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C handling must be put back"


def test_checkpoint_of_another_model_config_is_refused_naming_the_fields(data, tmp_path):
    path = tmp_path / "run.pt"
    config = small_train_config(steps=2, checkpoint_path=str(path))
    train(small_model(data.vocab_size), data, config)
    other = small_model(data.vocab_size, n_experts=8, top_k=1)
    with pytest.raises(CheckpointMismatch) as err:
        train(other, data, config, resume=True)
    message = str(err.value)
    for text in ("model.moe.n_experts: checkpoint has 4, this run has 8", "model.moe.top_k: checkpoint has 2, this run has 1"):
        assert text in message, f"the refusal should say {text!r}; it said:\n{message}"
    assert set(err.value.fields) == {"model.moe.n_experts", "model.moe.top_k"}, err.value.fields


def test_checkpoint_of_other_training_settings_is_refused_naming_the_fields(data, tmp_path):
    path = tmp_path / "run.pt"
    train(small_model(data.vocab_size), data, small_train_config(steps=2, checkpoint_path=str(path)))
    changed = small_train_config(steps=2, checkpoint_path=str(path), lr=5e-3, batch_size=4, eval_every=1)
    with pytest.raises(CheckpointMismatch) as err:
        train(small_model(data.vocab_size), data, changed, resume=True)
    assert set(err.value.fields) == {"train.lr", "train.batch_size"}, \
        f"expected lr and batch_size to be named (eval_every does not change the numbers); got {err.value.fields}"


def test_model_without_config_is_checked_by_parameter_shapes(data, tmp_path):
    path = tmp_path / "run.pt"
    config = small_train_config(steps=2, checkpoint_path=str(path))
    train(torch.nn.Sequential(torch.nn.Embedding(data.vocab_size, 8), torch.nn.Linear(8, data.vocab_size)), data, config)
    wider = torch.nn.Sequential(torch.nn.Embedding(data.vocab_size, 12), torch.nn.Linear(12, data.vocab_size))
    with pytest.raises(CheckpointMismatch, match=r"0\.weight: checkpoint has \(\d+, 8\), this run has \(\d+, 12\)"):
        train(wider, data, config, resume=True)
