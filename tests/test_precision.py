"""bfloat16 activations with float32 master weights against the float32 network.

The comparison compiles two gradient programs (about 40 s of CPU), so it is marked slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, data, precision, search, spaces


@pytest.fixture(scope="module")
def grads():
  """Loss and gradients (weights, alphas) of a tiny NB201 supernet, float32 and bfloat16."""
  ds = data.load("digits")
  model = spaces.get("nb201", channels=4, cells_per_stage=1, num_classes=10, dtype=jnp.float32)
  alphas = model.init_alphas(jax.random.key(1))
  weights, stats = search.init_variables(model, jax.random.key(2), ds.image_shape, alphas)
  batch, _ = data.search_batches(ds, 32, seed=0, step=0)
  out = {}
  for name, m in (("float32", model), ("bfloat16", precision.wrap(model, "bfloat16"))):
    loss = search.make_losses(m, lambda a, k: jax.tree.map(jax.nn.softmax, a), stats)
    f = jax.jit(jax.value_and_grad(lambda w, a: loss(w, a, batch, None), argnums=(0, 1),
                                   has_aux=True))
    (value, aux), (g_w, g_a) = f(weights, alphas)
    out[name] = (value, aux, g_w, g_a)
  return out


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.mark.slow
def test_master_weights_and_statistics_stay_float32(grads):
  _, aux, g_w, g_a = grads["bfloat16"]
  assert {x.dtype for x in jax.tree.leaves((g_w, g_a, aux["batch_stats"]))} == {jnp.dtype(jnp.float32)}


@pytest.mark.slow
def test_bfloat16_loss_and_gradients_are_close_to_float32(grads):
  # bfloat16 keeps 8 significand bits: unit roundoff u = 2^-9 ≈ 2e-3 per rounding. The loss passes
  # through ~15 roundings in depth; errors of independent sign grow like √15·u ≈ 8e-3, so the loss
  # is held to 1e-2 relative (measured: 2e-4). Gradients are noisier: ∂L/∂α_k sums
  # ⟨∂L/∂ō, o_k − ō⟩ over the batch and pixels, differences of op outputs that agree in their
  # leading digits, so bfloat16's relative error on each output is amplified by |o_k|/|o_k − ō|.
  # Measured on this network: cosine to the float32 gradient 0.975 (alphas) and 0.981 (weights),
  # norms 8% and 3% apart; held to cosine > 0.95 and norms within 15%. A lost cast fails by far:
  # alphas that do not reach the network give a zero gradient, float32 everywhere gives 1e-6.
  v32, _, gw32, ga32 = grads["float32"]
  v16, _, gw16, ga16 = grads["bfloat16"]
  assert abs(float(v16) - float(v32)) <= 1e-2 * abs(float(v32))
  for a, b in ((_flat(gw32), _flat(gw16)), (_flat(ga32), _flat(ga16))):
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.95, cosine
    assert abs(np.linalg.norm(b) - np.linalg.norm(a)) <= 0.15 * np.linalg.norm(a)
  assert float(v16) != float(v32)  # the bfloat16 program really ran in bfloat16


def test_unknown_dtype_is_one_line(tmp_path, capsys):
  code = cli.main(["search", "--dtype", "float16", "--steps", "1", "--out", str(tmp_path / "r")])
  err = capsys.readouterr().err
  assert code == 2 and "--dtype must be one of float32, bfloat16" in err
  assert len(err.strip().splitlines()) == 1
