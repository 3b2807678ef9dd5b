"""Non-finite steps: the step's bit mask, its description, and a diverging search that stops cleanly."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import checkpoint, methods, run, search, spaces
from jaxnas.errors import JaxnasError

NAN, INF = float("nan"), float("inf")


def _mask(metrics, weights, alphas):
  return int(jax.jit(search.nonfinite_mask)(metrics, weights, alphas))


def test_mask_bits_follow_the_table_worked_out_by_hand():
  # Bits by NONFINITE_QUANTITIES: val loss 1, arch gradient 2, train loss 4, weight gradient 8,
  # alphas 16, weights 32.
  assert [q for q, _ in search.NONFINITE_QUANTITIES] == [
      "val_loss", "alpha_grad_norm", "train_loss", "weight_grad_norm", "alphas", "weights"]
  finite = {"val_loss": 1.0, "alpha_grad_norm": 2.0, "train_loss": 3.0, "weight_grad_norm": 4.0}
  w = {"a": jnp.ones((2, 3)), "b": {"c": jnp.zeros(4)}}
  alphas = {"cell": jnp.zeros((6, 5))}
  assert _mask(finite, w, alphas) == 0
  assert _mask({**finite, "alpha_grad_norm": NAN}, w, alphas) == 2
  assert _mask({**finite, "val_loss": INF, "weight_grad_norm": -INF}, w, alphas) == 1 + 8
  bad_w = {"a": jnp.ones((2, 3)), "b": {"c": jnp.array([0.0, 0.0, NAN, 0.0])}}
  assert _mask({**finite, "train_loss": NAN}, bad_w, alphas) == 4 + 32
  assert _mask(finite, w, {"cell": jnp.zeros((6, 5)).at[5, 4].set(INF)}) == 16
  # A quantity the metrics do not report is not checked.
  assert _mask({"train_loss": 0.0}, w, alphas) == 0


def test_description_names_the_first_quantity_and_nan_or_inf():
  m = {"val_loss": 1.0, "alpha_grad_norm": NAN, "train_loss": INF, "weight_grad_norm": NAN}
  assert search.describe_nonfinite(2 + 4 + 8, m) == "arch gradient is NaN"
  assert search.describe_nonfinite(4, m) == "training loss is Inf"
  assert search.describe_nonfinite(32, m) == "weights are not finite"
  assert search.describe_nonfinite(16, {}) == "alphas are not finite"


# The end-to-end search (its own compile) is marked slow; the step's mask on a real compiled step
# is checked in test_checkpoint.py, which compiles one already.
@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
  """A tiny search whose weight learning rate (1e30) diverges; checkpoints after every step."""
  out = tmp_path_factory.mktemp("nan") / "run"
  recipe = methods.get("darts-1st").replace(
      name="darts-1st-diverging", weight_optimizer=methods.WeightOptimizer(lr=1e30, lr_min=1e30))
  cfg = run.SearchConfig(channels=2, cells=1, batch_size=8, steps=8, checkpoint_every=1,
                         out=str(out))
  with pytest.raises(JaxnasError) as info:
    run.run_search(cfg, recipe=recipe, stdout=open("/dev/null", "w"))
  return out, str(info.value)


@pytest.mark.slow
def test_diverging_search_stops_at_the_first_bad_step_with_one_line(diverged):
  out, message = diverged
  assert "\n" not in message
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  bad = [l["step"] for l in lines if l["nonfinite"]]
  # Every step before the named one is finite and logged; the named one is the last line.
  assert bad == [lines[-1]["step"]] and [l["step"] for l in lines] == list(range(1, bad[0] + 1))
  step = bad[0]
  assert 1 < step < 8
  checked = ("val_loss", "alpha_grad_norm", "train_loss", "weight_grad_norm")
  assert all(math.isfinite(l[k]) for l in lines[:-1] for k in checked)
  assert message.startswith(f"step {step}: ")
  assert message.split(": ", 1)[1].split(" (")[0] == search.describe_nonfinite(
      lines[-1]["nonfinite"], lines[-1])
  assert f"(last good checkpoint: {out.absolute() / 'checkpoints' / str(step - 1)})" in message


@pytest.mark.slow
def test_last_good_checkpoint_is_intact_and_the_bad_state_never_saved(diverged):
  out, _ = diverged
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  with checkpoint.Checkpoints(out / "checkpoints", keep=3) as ckpts:
    # One per step, keep=3: the newest three before the bad step, none at or after it.
    assert ckpts.steps() == list(range(max(1, len(lines) - 3), len(lines)))
    model = spaces.get("nb201", channels=2, cells_per_stage=1, num_classes=10)
    recipe = methods.get("darts-1st")
    like = search.init_search_state(model, recipe, jax.random.key(1), (8, 8, 1),
                                    steps_per_epoch=93, epochs=1)
    state, position = ckpts.restore(like)  # checks the digest written with it
  assert int(state.step) == position["step"] == len(lines) - 1
  for leaf in jax.tree.leaves((state.weights, state.alphas, state.w_opt_state)):
    assert np.all(np.isfinite(leaf))
  assert not (out / "summary.json").exists() and not (out / "alphas.npz").exists()


@pytest.mark.slow
def test_events_file_holds_the_step_scalars(diverged):
  from jaxnas import tb
  out, _ = diverged
  files = tb.event_files(out)
  assert len(files) == 1
  scalars = tb.read_scalars(out)
  for tag in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr",
              "weight_grad_norm", "alpha_grad_norm", "mixing_entropy"):
    assert tag in scalars, tag
  lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
  good = [l for l in lines if math.isfinite(l["train_loss"])]
  # The finite steps, each once, with the logged values (TensorBoard stores float32).
  assert [s for s, _ in scalars["train_loss"]] == [l["step"] for l in good[:len(
      scalars["train_loss"])]]
  np.testing.assert_allclose([v for _, v in scalars["train_loss"]],
                             [l["train_loss"] for l in good[:len(scalars["train_loss"])]],
                             rtol=1e-6)
  assert "nonfinite" not in scalars and "step" not in scalars
