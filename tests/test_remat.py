"""Rematerialisation changes memory, not numbers; warm-up leaves alphas and statistics alone.

Default run (cheap): :func:`jaxnas.spaces.remat.late_checkpoint` on small pure functions (values
and gradients against the plain function, XLA:CPU's temp buffer against the plain gradient's), its
Flax lift on a conv + BN module, and one tiny NAS-Bench-201 search step (C=2, two cells per stage,
batch 4, 8×8, float64) compiled ONCE for ``none`` and ``cell`` and shared (``op``: slow): the
steps agree, and the remat step's compiled temp buffer is smaller. The same compiled ``none``
step, run at step 0 of a one-epoch warm-up, checks the warm-up (alphas, Adam state and BN
statistics as a weight step alone leaves them). Slow: the same on the DARTS space (three compiles
of a DARTS step) and the fused two-phase DARTS program's warm-up.

:func:`jaxnas.spaces.remat.late_switch` (the sampled path's per-edge rule): values, gradients and
Hessian-vector products against ``lax.switch``, and a smaller temp buffer (default run). The
sampled path (GDAS, D2NAS; :mod:`jaxnas.spaces.sampled`), whose edges are rematerialised by
default (slow: about 400 s on the busy 2-core CPU for three compiles): the loss gradient of a tiny
sampled supernet (C=2, 3 cells, batch 2, 8×8, a D2NAS sample) with and without edge
rematerialisation and with ``remat="cell"``: equal numbers, smaller temp buffer. The default run
checks the sampled edge group with and without it against the full mixed op (tests/test_gumbel.py).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnas import derive, methods, relax, search, spaces
from jaxnas.errors import JaxnasError
from jaxnas.run import SearchConfig, space_config, validate
from jaxnas.spaces.layers import BatchNorm
from jaxnas.spaces.remat import late_checkpoint, late_switch, remat

SHAPE = (8, 8, 3)
SPE = 5  # steps per epoch; the recipe warms up for one epoch, so steps 0..4 are warm-up


def _batch(seed, n=4):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.standard_normal((n,) + SHAPE)),
          "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def _tree_close(a, b, rtol=1e-10, atol=1e-12):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def _temp(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


# ----------------------------------------------------------------------------- late_checkpoint

def _block(w, x, n):
  for _ in range(n):
    x = jnp.tanh(x @ w)
  return x


def _assert_same_derivatives(plain, late, ws, x, scale):
  """``plain`` and ``late``, functions of ``(ws, x, scale)``: the same value, gradients (the
  closed-over ``scale``'s included and non-zero) and forward-over-reverse Hessian-vector products
  in ``(ws, x)`` (the exact products of darts-2nd-exact and eigen.py), float64."""
  (v0, g0), (v1, g1) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(ws, x, scale)
                        for f in (plain, late))
  np.testing.assert_allclose(v1, v0, rtol=1e-14)
  _tree_close(g1, g0, rtol=1e-12, atol=1e-14)
  assert float(jnp.abs(g0[2])) > 0  # the closed-over value's gradient is not lost
  tangents = ([w.T for w in ws], x[::-1])
  hvp0, hvp1 = (jax.jit(lambda ws, x, f=f: jax.jvp(
      lambda ws, x: jax.grad(f, argnums=(0, 1))(ws, x, scale), (ws, x), tangents)[1])(ws, x)
      for f in (plain, late))
  _tree_close(hvp1, hvp0, rtol=1e-10, atol=1e-13)
  assert max(float(jnp.max(jnp.abs(h))) for h in jax.tree.leaves(hvp0)) > 1e-3


def test_late_checkpoint_has_the_functions_values_and_gradients():
  rng = np.random.default_rng(0)
  ws = [jnp.asarray(rng.standard_normal((3, 3))) for _ in range(3)]
  x = jnp.asarray(rng.standard_normal((5, 3)))
  scale = jnp.asarray(0.7)

  def net(ws, x, scale, wrap):
    for w in ws:  # `scale` reaches the wrapped block through its closure (an outer tracer)
      x = wrap(lambda w, x, n: _block(scale * w, x, n), static_argnums=(2,))(w, x, 2)
    return jnp.sum(x ** 2)

  _assert_same_derivatives(lambda *a: net(*a, lambda f, static_argnums: f),
                           lambda *a: net(*a, late_checkpoint), ws, x, scale)


def test_late_checkpoint_lowers_the_compiled_temp_buffer():
  """8 blocks of 4 tanh layers: the plain gradient keeps all 32 activations, the rematerialised
  one the 8 block inputs and one block's activations at a time (here 58.7 MB against 142.6 MB at
  batch 64 × 32 × 32 × 16; a quarter of that size below). jax.checkpoint alone saves nothing on
  XLA:CPU (jaxnas/spaces/remat.py)."""
  ws = [jax.ShapeDtypeStruct((8, 8), jnp.float32)] * 8
  x = jax.ShapeDtypeStruct((16, 16, 16, 8), jnp.float32)

  def loss(ws, x, wrap):
    for w in ws:
      x = wrap(lambda w, x: _block(w, x, 4))(w, x)
    return jnp.sum(x ** 2)

  plain = _temp(jax.grad(lambda ws, x: loss(ws, x, lambda f: f)), ws, x)
  late = _temp(jax.grad(lambda ws, x: loss(ws, x, late_checkpoint)), ws, x)
  one = 16 * 16 * 16 * 8 * 4  # bytes of one activation
  assert plain >= 24 * one  # most of the 32 activations are live at once
  assert late <= 0.6 * plain


def _branches(scale):
  """Three branches of one signature: a 2-layer tanh block (closing over the traced ``scale``),
  a sine and an elementwise one."""
  return [lambda w, x: _block(scale * w, x, 2), lambda w, x: jnp.sin(x @ w.T),
          lambda w, x: jnp.cos(x) * jnp.sum(w)]


def test_late_switch_has_the_switchs_values_and_gradients():
  rng = np.random.default_rng(1)
  ws = [jnp.asarray(rng.standard_normal((3, 3))) for _ in range(4)]
  x = jnp.asarray(rng.standard_normal((5, 3)))
  scale = jnp.asarray(0.7)

  def net(ws, x, scale, switch):
    for j, w in enumerate(ws):  # indices 0, 1, 2, 0 along the chain
      x = switch(jnp.asarray(j % 3), _branches(scale), w, x)
    return jnp.sum(x ** 2)

  _assert_same_derivatives(lambda *a: net(*a, jax.lax.switch), lambda *a: net(*a, late_switch),
                           ws, x, scale)


def test_late_switch_keeps_no_branch_residuals():
  """8 switches whose branch 0 is 4 tanh layers: the plain switch's gradient keeps each one's
  residuals (whatever the index), the late switch only its inputs."""
  ws = [jax.ShapeDtypeStruct((8, 8), jnp.float32)] * 8
  x = jax.ShapeDtypeStruct((16, 16, 16, 8), jnp.float32)
  branches = [lambda w, x: _block(w, x, 4), lambda w, x: x * jnp.sum(w)]

  def loss(ws, x, switch):
    for j, w in enumerate(ws):
      x = switch(jnp.asarray(j % 2), branches, w, x)
    return jnp.sum(x ** 2)

  plain = _temp(jax.grad(lambda ws, x: loss(ws, x, jax.lax.switch)), ws, x)
  late = _temp(jax.grad(lambda ws, x: loss(ws, x, late_switch)), ws, x)
  one = 16 * 16 * 16 * 8 * 4  # bytes of one activation
  assert plain >= 16 * one  # XLA:CPU here: 22 activations; the late switch 11 (8 inputs + work)
  assert late <= 0.6 * plain, (late, plain)


class _ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, scale, train: bool):
    k = self.param("k", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], 4), jnp.float64)
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(scale * BatchNorm(dtype=jnp.float64, name="bn")(y, train=train))


class _Net(nn.Module):
  remat: bool

  @nn.compact
  def __call__(self, x, scale):
    cls = remat(_ConvBN, static_argnums=(3,)) if self.remat else _ConvBN
    for i in range(3):
      x = cls(name=f"b{i}")(x, scale, True)
    return jnp.mean(x ** 2)


def test_flax_remat_lift_keeps_params_grads_and_batch_stats():
  x = _batch(3)["image"]
  scale = jnp.asarray(1.3)
  variables = _Net(False).init(jax.random.key(0), x, scale)

  def run(flag):
    def loss(params, scale):
      out, new = _Net(flag).apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                  scale, mutable=["batch_stats"])
      return out, new["batch_stats"]
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        variables["params"], scale)

  ((v0, s0), g0), ((v1, s1), g1) = run(False), run(True)
  np.testing.assert_allclose(v1, v0, rtol=1e-13)
  _tree_close(g1, g0, rtol=1e-11, atol=1e-14)
  _tree_close(s1, s0, rtol=1e-13, atol=1e-15)
  assert not np.allclose(s0["b0"]["bn"]["mean"], variables["batch_stats"]["b0"]["bn"]["mean"])


# ----------------------------------------------------------------------------- search steps

def _warmup_recipe():
  return dataclasses.replace(methods.get("darts-1st"), arch_warmup_epochs=1)


def _compiled_steps(space, modes, fuse_phases=None, more=None, **config):
  """Initial state and, per remat mode, the compiled (not donated) step and its temp bytes;
  ``more``: an earlier result of this function, whose model, state and steps are reused."""
  recipe = _warmup_recipe()
  if more is None:
    base = spaces.get(space, dtype=jnp.float64, num_classes=10, **config)
    state = search.init_search_state(base, recipe, jax.random.key(0), SHAPE,
                                     steps_per_epoch=SPE, epochs=2)
    out = {"model": base, "state": state, "steps": {}, "temp": {}}
  else:
    out = {**more, "steps": dict(more["steps"]), "temp": dict(more["temp"])}
    base, state = more["model"], more["state"]
  for mode in modes:
    model = base.clone(remat=mode)
    # The parameter tree does not depend on remat: one initial state serves every mode.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                                               base.init_alphas(jax.random.key(1)), train=False))
    assert jax.tree.structure(shapes["params"]) == jax.tree.structure(state.weights)
    step = search.make_search_step(model, recipe, steps_per_epoch=SPE, epochs=2, jit=False,
                                   fuse_phases=fuse_phases)
    compiled = jax.jit(step).lower(state, _batch(1), _batch(2)).compile()
    out["steps"][mode] = compiled
    out["temp"][mode] = compiled.memory_analysis().temp_size_in_bytes
  return out


def _check_equal(results):
  (ref_state, ref_m) = results["none"]
  for mode, (got_state, got_m) in results.items():
    for name in ("alphas", "weights", "batch_stats", "w_opt_state", "a_opt_state"):
      _tree_close(getattr(ref_state, name), getattr(got_state, name))
    for key in ref_m:
      np.testing.assert_allclose(got_m[key], ref_m[key], rtol=1e-10, atol=1e-12,
                                 err_msg=f"{mode}: {key}")


def _active_results(compiled):
  """Every mode's step at step SPE (after warm-up) from the same state."""
  state = compiled["state"]._replace(step=jnp.asarray(SPE, jnp.int32))
  return {m: step(state, _batch(1), _batch(2)) for m, step in compiled["steps"].items()}


def _check_warmup(compiled):
  """Step 0 (warm-up) leaves alphas and the Adam state alone, and the BN statistics are those of
  the train-mode forward on the train batch alone; step SPE's statistics also saw the val batch
  (the arch step's forward) first."""
  model, state = compiled["model"], compiled["state"]
  step = compiled["steps"]["none"]
  mixing = search.make_relaxation(_warmup_recipe(), model.op_names)(state.alphas, None)

  @jax.jit
  def stats_after(batches):
    stats = state.batch_stats
    for b in batches:
      stats = search.make_mixing_loss(model, stats)(state.weights, mixing, b, None)[1][
          "batch_stats"]
    return stats

  warm, _ = step(state, _batch(1), _batch(2))
  _tree_close(warm.alphas, state.alphas, rtol=0, atol=0)
  _tree_close(warm.a_opt_state, state.a_opt_state, rtol=0, atol=0)
  _tree_close(warm.batch_stats, stats_after((_batch(1),)), rtol=1e-12, atol=1e-14)
  active, _ = step(state._replace(step=jnp.asarray(SPE, jnp.int32)), _batch(1), _batch(2))
  # After warm-up the arch step's forward on the val batch (_batch(2)) updates them first. Its
  # alphas moved, but only the statistics are compared, and those do not depend on the mixing.
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                        active.batch_stats, warm.batch_stats))
  assert max(leaves) > 1e-6
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), active.alphas,
                                       state.alphas))


@pytest.fixture(scope="module")
def nb201():
  return _compiled_steps("nb201", ("none", "cell"), channels=2, cells_per_stage=2)


@pytest.fixture(scope="module")
def nb201_op(nb201):
  return _compiled_steps("nb201", ("op",), more=nb201)


def test_nb201_step_is_the_same_with_cell_remat_and_needs_less_memory(nb201):
  results = _active_results(nb201)
  _check_equal(results)
  assert float(results["none"][1]["alpha_grad_norm"]) > 0
  assert nb201["temp"]["cell"] < 0.8 * nb201["temp"]["none"], nb201["temp"]


@pytest.mark.slow  # one more compile of the step
def test_nb201_step_is_the_same_with_op_remat_and_needs_less_memory(nb201_op):
  results = _active_results(nb201_op)
  _check_equal(results)
  assert nb201_op["temp"]["op"] < 0.8 * nb201_op["temp"]["none"], nb201_op["temp"]


def test_warmup_step_is_the_weight_step_alone(nb201):
  _check_warmup(nb201)


@pytest.fixture(scope="module")
def darts():
  return _compiled_steps("darts", ("none", "cell", "op"), channels=4, num_cells=3)


@pytest.mark.slow  # three compiles of a DARTS search step: minutes on a busy 2-core CPU
def test_darts_step_is_the_same_with_cell_and_op_remat_and_needs_less_memory(darts):
  results = _active_results(darts)
  _check_equal(results)
  assert float(results["none"][1]["alpha_grad_norm"]) > 0
  assert darts["temp"]["op"] < 0.8 * darts["temp"]["none"], darts["temp"]
  assert darts["temp"]["cell"] < darts["temp"]["none"], darts["temp"]


@pytest.mark.slow  # one more DARTS compile (the fused two-phase program is the DARTS default)
def test_darts_fused_warmup_step_is_the_weight_step_alone():
  compiled = _compiled_steps("darts", ("none",), fuse_phases=True, channels=4, num_cells=3)
  _check_warmup(compiled)


# ----------------------------------------------------------------------------- the sampled path

SAMPLED = dict(channels=2, num_cells=3)
PLAIN = {"edge_remat": False}


@pytest.fixture(scope="module")
def sampled_grads():
  """Loss gradient (weights and alphas, through a D2NAS sample) of a tiny sampled supernet,
  compiled once per variant: plain (switch residuals kept), edges rematerialised (the default),
  cells rematerialised on top. Returns per variant ``(loss, grads, new stats)`` and temp bytes."""
  base = spaces.get("darts", sampled=True, dtype=jnp.float64, num_classes=10, **SAMPLED)
  alphas = {k: jnp.asarray(np.random.default_rng(5).normal(size=v))
            for k, v in base.alpha_shapes().items()}
  shapes = jax.eval_shape(lambda: base.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                                            base.init_alphas(jax.random.key(1)), train=False))
  rng = np.random.default_rng(6)
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape)), shapes["params"])
  stats = jax.tree.map(lambda s: jnp.asarray(np.abs(rng.normal(size=s.shape)) + 0.5),
                       shapes["batch_stats"])
  batch = _batch(7, n=2)
  sample = relax.get("d2nas")

  def grad_fn(model):
    def loss(params, alphas):
      mixing = sample(alphas, jax.random.key(8), op_names=derive.DARTS_OPS, progress=0.5)
      logits, new = model.apply({"params": params, "batch_stats": stats}, batch["image"], mixing,
                                train=True, mutable=["batch_stats"])
      return search.cross_entropy(logits, batch["label"]), new["batch_stats"]
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

  out = {"results": {}, "temp": {}}
  for name, opts in (("plain", PLAIN), ("edge", {}), ("cell", {"remat": "cell"})):
    compiled = grad_fn(base.clone(**opts)).lower(params, alphas).compile()
    out["temp"][name] = compiled.memory_analysis().temp_size_in_bytes
    out["results"][name] = compiled(params, alphas)
  return out


@pytest.mark.slow  # the fixture compiles three sampled supernets (minutes on a busy 2-core CPU)
def test_sampled_path_gradients_are_the_same_with_edge_and_cell_remat(sampled_grads):
  results = sampled_grads["results"]
  (loss0, stats0), grads0 = results["plain"]
  assert float(jnp.max(jnp.abs(grads0[1]["normal"]))) > 1e-6  # the alphas do get a gradient
  for name, ((loss, stats), grads) in results.items():
    np.testing.assert_allclose(loss, loss0, rtol=1e-12, err_msg=name)
    _tree_close(grads, grads0)
    _tree_close(stats, stats0)


@pytest.mark.slow  # the fixture compiles three sampled supernets (minutes on a busy 2-core CPU)
def test_sampled_path_needs_less_memory_with_edge_remat(sampled_grads):
  # Here plain 888 kB, edge 217 kB, cell 219 kB: at 3 tiny cells the recomputed cell costs what
  # the kept states save; the full-size figures are in experiments/RESULTS.md.
  temp = sampled_grads["temp"]
  assert temp["edge"] < 0.7 * temp["plain"], temp
  assert temp["cell"] < 0.7 * temp["plain"], temp


def test_sampled_path_rejects_an_unknown_remat_in_one_line():
  model = spaces.get("darts", sampled=True, remat="layer", **SAMPLED)
  with pytest.raises(JaxnasError, match="remat is 'layer'"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                                      model.init_alphas(jax.random.key(1)), train=False))


def test_remat_option_reaches_the_space_and_bad_values_are_one_line_errors():
  cfg = SearchConfig(space="darts", remat="cell", channels=4, cells=3)
  assert space_config(cfg, 10)["remat"] == "cell"
  assert "remat" not in space_config(SearchConfig(space="darts", channels=4, cells=3), 10)
  with pytest.raises(JaxnasError, match="--remat must be"):
    validate(SearchConfig(remat="layer"))
  model = spaces.get("nb201", channels=2, cells_per_stage=1, remat="layer")
  with pytest.raises(JaxnasError, match="remat is 'layer'"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE),
                                      model.init_alphas(jax.random.key(1)), train=False))
