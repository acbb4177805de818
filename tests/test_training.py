import pytest
import torch

from captinv.errors import TrainingDivergedError
from captinv.trainer import Callbacks
from tests.helpers import make_trainer, weights


@pytest.mark.parametrize("backend_name", ["sd1", "sd2v", "sdxl", "sd1_inpaint"])
def test_training_lowers_held_out_loss_and_only_the_vectors_change(request, backend_name, chelsea, tmp_path):
    backend = request.getfixturevalue(backend_name)
    before = weights(backend)
    flags = [p.requires_grad for m in backend.frozen_modules() for p in m.parameters()]
    trainer = make_trainer(backend, chelsea, tmp_path, steps=40, batch_size=4, auto_stop=False)
    draws = trainer.fixed_draws(16, seed=1234)
    loss_before = trainer.evaluate(draws)
    initial = {k: v.clone() for k, v in trainer.params.items()}

    result = trainer.run()

    assert trainer.evaluate(draws) < loss_before
    after = weights(backend)
    assert all(torch.equal(before[k], after[k]) for k in before), "a model weight changed"
    assert [p.requires_grad for m in backend.frozen_modules() for p in m.parameters()] == flags
    assert all(not torch.equal(initial[k], trainer.params[k]) for k in initial)
    assert result.steps == 40 and len(result.losses) == 40 and result.rollbacks == 0
    # the snapshot is what the trainer holds, per word
    for name, part in trainer.slices.items():
        for key, value in result.embeddings[name].items():
            assert torch.equal(value, trainer.params[key][part].detach().cpu())


def test_runs_are_reproducible_for_a_seed(sd1, chelsea, tmp_path):
    first = make_trainer(sd1, chelsea, tmp_path, seed=7).run().embeddings
    second = make_trainer(sd1, chelsea, tmp_path, seed=7).run().embeddings
    other = make_trainer(sd1, chelsea, tmp_path, seed=8).run().embeddings
    name = next(iter(first))
    assert torch.equal(first[name]["emb_params"], second[name]["emb_params"])
    assert not torch.equal(first[name]["emb_params"], other[name]["emb_params"])


def test_nan_guard_rolls_back_to_the_last_good_vectors_and_lowers_the_rate(sd1, chelsea, tmp_path):
    trainer = make_trainer(sd1, chelsea, tmp_path)
    assert trainer.step() is not None
    good = trainer.params["emb_params"].detach().clone()
    lr = trainer.optimizer.param_groups[0]["lr"]
    with torch.no_grad():
        trainer.params["emb_params"][0, 0] = float("nan")

    assert trainer.step() is None  # the poisoned vector makes the loss NaN: rolled back

    assert torch.equal(trainer.params["emb_params"], good)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr / 2)
    assert trainer.step() is not None and torch.isfinite(trainer.params["emb_params"]).all()


def test_nan_guard_gives_up_with_a_clear_error(sd1, chelsea, tmp_path):
    trainer = make_trainer(sd1, chelsea, tmp_path)
    with torch.no_grad():
        trainer._last_good[0][0, 0] = float("nan")
        trainer.params["emb_params"][0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        for _ in range(10):
            trainer.step()


def test_progress_reports_steps_loss_and_eta(sd1, chelsea, tmp_path):
    seen = []
    make_trainer(sd1, chelsea, tmp_path, steps=4).run(Callbacks(progress=seen.append))
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(p.total == 4 and p.loss > 0 and p.eta >= 0 for p in seen)
    assert seen[-1].eta == 0


def test_lr_schedules(sd1, chelsea, tmp_path):
    trainer = make_trainer(sd1, chelsea, tmp_path, steps=10, warmup_steps=2, lr_schedule="cosine")
    factors = [trainer._lr_factor(s) for s in range(10)]
    assert factors[0] == pytest.approx(0.5) and factors[2] == pytest.approx(1.0)
    assert factors[-1] < factors[3] < factors[2]
