"""D2NAS' branch cells: which weights the search updates, and the sampler's constraint with them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import cli, derive, methods, run, search, spaces
from jaxnas.errors import JaxnasError
from jaxnas.methods import ArchOptimizer, WeightOptimizer
from jaxnas.spaces import branch
from _variables import filled_variables

IMAGE = (8, 8, 3)


def _is_branch(path):
  return any(getattr(p, "key", "").startswith("from_") for p in path)


@pytest.fixture(scope="module")
def params3():
  """The weights of a 3-cell branch supernet (C = 2), filled from NumPy. The full supernet: the
  sampled one (the recipe's) has the same weights under the same names (tests/test_gumbel.py) and
  takes 5× longer to trace; the slow CLI test below runs the sampled one."""
  model = spaces.get("darts", channels=2, num_cells=3, branch_cells=True)
  return model, filled_variables(model, 1)["params"]


def test_the_branch_cells_are_every_cells_candidate_operations_counted_by_hand(params3):
  # 3 cells (reductions at 1 and 2). Branch: a normal edge group holds sep3/sep5 (dw1, pw1, dw2,
  # pw2) and dil3/dil5 (dw, pw) = 12 weights, a stride-2 group 2 more (FactorizedReduce): cell 0
  # 5 × 12, cells 1 and 2 2 × 14 + 3 × 12 each: 188. Backbone: stem kernel, stem BN scale and bias,
  # classifier kernel and bias (5), the preprocessing convs 2 + 2 + 3 (cell 2 follows a
  # reduction: FactorizedReduce, two convs): 12.
  model, params = params3
  frozen = jax.tree_util.tree_flatten_with_path(model.frozen_weights(params))[0]
  assert sum(f for _, f in frozen) == 188 and sum(not f for _, f in frozen) == 12
  assert all(f == _is_branch(path) for path, f in frozen)
  with pytest.raises(JaxnasError, match="darts space") as e:
    spaces.get("nb201", branch_cells=True)
  assert "\n" not in str(e.value)


def test_the_weight_step_moves_the_backbone_only_by_sgds_formula(params3):
  # One update of the weight optimiser at step 0: backbone w' − w = −lr·(s·g + λ·w) with
  # s = min(1, 5/‖g_backbone‖) (the clipping sees the backbone's gradient alone), λ = 3e-4,
  # lr = 0.025, momentum buffer = the first gradient; branch weights: exactly 0, no decay.
  model, params = params3
  rng = np.random.default_rng(2)
  grads = jax.tree.map(lambda p: (3.0 * rng.normal(size=p.shape)).astype(p.dtype), params)
  w_tx, _, _ = search.make_optimizers(WeightOptimizer(), ArchOptimizer(), steps_per_epoch=1,
                                      epochs=1, frozen=model.frozen_weights)
  with jax.numpy_dtype_promotion("standard"):
    updates, _ = jax.jit(w_tx.update)(grads, w_tx.init(params), params)
  flat_g = jax.tree_util.tree_flatten_with_path(grads)[0]
  norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for p, g in flat_g
                     if not _is_branch(p)))
  assert norm > 5  # the clipping is active, so a wrong norm would show
  scale = min(1.0, 5.0 / norm)
  flat_w = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    u = np.asarray(u)
    if _is_branch(path):
      assert np.all(u == 0), path
    else:
      g = dict(flat_g)[path].astype(np.float64)
      expect = -0.025 * (scale * g + 3e-4 * flat_w[path].astype(np.float64))
      np.testing.assert_allclose(u, expect, rtol=2e-5, atol=1e-9)


def test_d2nas_branch_keeps_two_input_edges_per_node_in_every_sample():
  recipe = methods.get("d2nas-branch")
  relaxation = search.make_relaxation(recipe, derive.DARTS_OPS, progress=0.3)
  alphas = {k: jnp.asarray(np.random.default_rng(3).normal(size=(14, 8))) for k in
            ("normal", "reduce")}
  samples = jax.jit(jax.vmap(lambda k: relaxation(alphas, k)))(
      jax.random.split(jax.random.key(4), 1000))
  nodes = np.asarray([to for to, _ in derive.darts_edge_sources()])
  for kind in ("normal", "reduce"):
    w = np.asarray(samples[kind])  # (1000, 14, 8)
    active = w.sum(-1) > 0
    assert np.all((w == 0) | (w == 1)) and np.all(w[..., 0] == 0)  # one-hot, never 'none'
    assert np.all(w.sum(-1)[active] == 1)
    for node in range(4):
      assert np.all(active[:, nodes == node].sum(-1) == 2)


class _Group(nn.Module):
  @nn.compact
  def __call__(self, h):
    return jnp.tanh(h @ self.param("w", nn.initializers.normal(1.0), (3, 3), jnp.float64))


class _Toy(nn.Module):
  """A stem, one branch edge group (``from_0``) beside a skip, a classifier: the names the DARTS
  supernet gives its weights, on a program that compiles at once."""

  @nn.compact
  def __call__(self, x, weights, *, train):
    self.variable("batch_stats", "seen", lambda: jnp.zeros((), jnp.float64))
    h = x.reshape(x.shape[0], -1)[:, :3] * self.param("stem", nn.initializers.ones, (3,),
                                                        jnp.float64)
    w = weights["normal"]
    y = w[0, 0] * _Group(name="from_0")(h) + w[0, 1] * h
    return y @ self.param("classifier", nn.initializers.normal(1.0), (3, 10), jnp.float64)


class _ToyBranch(_Toy):
  def frozen_weights(self, params):
    return branch.branch_weights(params)


def test_the_loss_sees_branch_weights_through_stop_gradient_alone():
  # A toy with the marks of a branch supernet against the same toy without them: the branch
  # weight's gradient is exactly 0, the backbone's and the mixing weights' are the same.
  x = jnp.asarray(np.random.default_rng(7).normal(size=(4, 2, 2)))
  batch = {"image": x, "label": jnp.asarray([0, 3, 5, 9])}
  mixing = {"normal": jnp.asarray([[0.7, 0.3]])}
  out = {}
  for cls in (_ToyBranch, _Toy):
    model = cls()
    v = model.init(jax.random.key(0), x, mixing, train=False)
    loss = search.make_mixing_loss(model, v["batch_stats"])
    out[cls] = jax.jit(jax.grad(lambda w, m: loss(w, m, batch, None)[0], argnums=(0, 1)))(
        v["params"], mixing)
  (g_w, g_m), (plain_w, plain_m) = out[_ToyBranch], out[_Toy]
  assert np.all(np.asarray(g_w["from_0"]["w"]) == 0)
  assert np.all(np.asarray(plain_w["from_0"]["w"]) != 0)
  for name in ("stem", "classifier"):
    assert np.any(np.asarray(g_w[name]) != 0)
    np.testing.assert_array_equal(g_w[name], plain_w[name])
  assert np.all(np.asarray(g_m["normal"]) != 0)
  np.testing.assert_array_equal(g_m["normal"], plain_m["normal"])


@pytest.fixture(scope="module")
def grads():
  """Gradients of one train-mode loss in weights and mixing weights, with and without branch
  cells, on a one-cell supernet (one compile each)."""
  out = {}
  for branch in (True, False):
    model = spaces.get("darts", channels=2, num_cells=1, branch_cells=branch)
    v = filled_variables(model, 5)
    stats = jax.tree.map(np.abs, v["batch_stats"])
    rng = np.random.default_rng(6)
    batch = {"image": jnp.asarray(rng.normal(size=(2,) + IMAGE)), "label": jnp.asarray([1, 3])}
    mixing = {k: jax.nn.softmax(jnp.asarray(rng.normal(size=(14, 8))), -1)
              for k in ("normal", "reduce")}
    loss = search.make_mixing_loss(model, stats)
    out[branch] = jax.jit(jax.grad(lambda w, m: loss(w, m, batch, None)[0], argnums=(0, 1)))(
        v["params"], mixing)
  return out


@pytest.mark.slow
def test_branch_weights_get_no_gradient_and_the_rest_is_unchanged(grads):
  (g_w, g_m), (plain_w, plain_m) = grads[True], grads[False]
  plain = dict(jax.tree_util.tree_flatten_with_path(plain_w)[0])
  for path, g in jax.tree_util.tree_flatten_with_path(g_w)[0]:
    if _is_branch(path):
      assert np.all(np.asarray(g) == 0), path
    else:  # the backbone's gradient is the plain supernet's
      np.testing.assert_allclose(g, plain[path], rtol=1e-5, atol=1e-7)
  assert any(np.any(np.asarray(plain[p]) != 0) for p in plain if _is_branch(p))
  # The architecture's gradient is unchanged: it flows through the branch cells' outputs. (The
  # one cell is a reduction cell: the normal cell's weights are unused, their gradient 0.)
  assert np.any(np.asarray(g_m["reduce"]) != 0)
  for k in g_m:
    np.testing.assert_allclose(g_m[k], plain_m[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_d2nas_branch_runs_from_the_cli_and_leaves_the_branch_weights_as_initialised(tmp_path):
  out = tmp_path / "run"
  flags = ["--space", "darts", "--channels", "2", "--cells", "1", "--batch-size", "4",
           "--steps", "2"]
  assert cli.main(["search", "--method", "d2nas-branch", *flags, "--no-compile-cache",
                   "--out", str(out)]) == 0
  plan = run.prepare(run.SearchConfig(space="darts", method="d2nas-branch", channels=2, cells=1,
                                      batch_size=4, steps=2))
  first = search.init_search_state(plan.model, plan.recipe, jax.random.key(0),
                                   plan.dataset.image_shape, steps_per_epoch=plan.steps_per_epoch,
                                   epochs=plan.epochs)
  from jaxnas import checkpoint
  with checkpoint.Checkpoints(out / "checkpoints") as ckpts:
    last, _ = ckpts.restore(first)
  before = dict(jax.tree_util.tree_flatten_with_path(jax.device_get(first.weights))[0])
  moved = []
  for path, w in jax.tree_util.tree_flatten_with_path(jax.device_get(last.weights))[0]:
    if _is_branch(path):
      np.testing.assert_array_equal(w, before[path])
    else:
      moved.append(not np.array_equal(w, before[path]))
  assert all(moved)
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(last.alphas), jax.tree.leaves(first.alphas)))
