"""Rematerialisation whose recomputation waits for the backward pass (``--remat cell|op``).

Why not plain ``jax.checkpoint`` (``flax.linen.remat``): it lowers the recomputation as the
forward computation behind an ``optimization_barrier`` on its *inputs* only (``prevent_cse``).
Nothing ties the recomputation to the cotangent that arrives in the backward pass, so XLA's
scheduler is free to run it at any time after the inputs exist; XLA:CPU runs it early, during the
forward pass, and the recomputed activations then live as long as the saved ones would have. On a
DARTS supernet (C=4, 3 cells, batch 8, 16×16, gradient of the loss) ``nn.remat`` on every cell gave
XLA:CPU a temp buffer of 24.3 MB against 22.5 MB without remat (experiments/RESULTS.md).

:func:`late_checkpoint` is the same function with a custom VJP: the forward pass keeps only the
inputs; the backward pass puts the inputs *and the output cotangent* through one
``optimization_barrier`` and only then recomputes the forward and its VJP,

.. math:: (x, \\bar y) \\leftarrow \\mathrm{barrier}(x, \\bar y), \\qquad
   \\bar x = \\big(\\partial f(x)\\big)^{\\top} \\bar y,

so the recomputation cannot start before :math:`\\bar y` exists (the gradient-checkpointing of
Chen et al., 2016, "Training deep nets with sublinear memory cost", with the schedule enforced).
:func:`remat` lifts it over a Flax module like ``flax.linen.remat`` (same ``static_argnums``
convention, the module counted as argument 0), so parameters, mutable ``batch_stats`` and RNG
streams pass through as with ``nn.remat``.

:func:`late_switch` applies the same rule to a ``lax.switch`` (the sampled path's edges,
:mod:`jaxnas.spaces.sampled`): it keeps the index and the operands, and its backward pass is one
switch whose taken branch recomputes itself and applies its VJP.

Being a custom VJP, the wrapped function supports reverse mode and forward-over-reverse (the
Hessian-vector products ``jax.jvp(jax.grad(f))`` of ``darts-2nd-exact``, ``jaxnas.eigen`` and
``jax.hessian``; tested), but not ``jax.jvp`` of the function itself, which jaxnas does not use.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import lift

__all__ = ["late_checkpoint", "late_switch", "remat"]


def _is_float(x):
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


_INT_OF_WIDTH = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}


def _after(tree, ct):
  r"""``tree``'s floating-point leaves, bit for bit, as values computed from the cotangent ``ct``.

  With :math:`b` the bits of the first entry of the first floating-point leaf of ``ct``, each
  leaf becomes :math:`\mathrm{select}(b \,|\, 1 \ne 0,\; x,\; 0) = x`. The predicate is always
  true but no XLA simplification proves it, so everything computed from the result depends on
  ``ct`` (it cannot run before the backward pass reaches this point) and differs from the forward
  pass' values for common-subexpression elimination.
  """
  probe = next((x for x in jax.tree.leaves(ct) if _is_float(x) and x.size), None)
  if probe is None:
    return tree
  first = probe.reshape(-1)[0]
  bits = jax.lax.bitcast_convert_type(first, _INT_OF_WIDTH[first.dtype.itemsize])
  ready = (bits | 1) != 0
  return jax.tree.map(lambda x: jnp.where(ready, x, jnp.zeros_like(x)) if _is_float(x) else x,
                      tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _call(fn, *args):
  return fn(*args)


def _call_fwd(fn, *args):
  return fn(*args), args  # residuals: the inputs only


def _call_bwd(fn, args, ct):
  args = _after(args, ct)  # the recomputation below waits for the cotangent
  _, vjp = jax.vjp(fn, *args)
  return vjp(ct)


_call.defvjp(_call_fwd, _call_bwd)


def late_checkpoint(fun, static_argnums: Sequence[int] = ()):
  r"""``fun`` rematerialised: same values and gradients, its activations recomputed late.

  The forward pass computes :math:`y = f(x)` and keeps only :math:`x`; the backward pass waits for
  :math:`\bar y` (an optimisation barrier over :math:`x` and :math:`\bar y`), recomputes
  :math:`f` and returns :math:`\bar x = \partial f(x)^\top \bar y` (see the module docstring for
  why ``jax.checkpoint``'s barrier on the inputs alone is not enough on XLA:CPU).

  Args:
    fun: a pure function of pytrees of arrays.
    static_argnums: positions of arguments that are Python values (not traced).

  Returns:
    The wrapped function.
  """
  static = frozenset(static_argnums)

  @functools.wraps(fun)
  def wrapped(*args):
    dyn = [a for i, a in enumerate(args) if i not in static]

    def pure(*dyn_args):
      it = iter(dyn_args)
      return fun(*(a if i in static else next(it) for i, a in enumerate(args)))

    # Trace once; values the function closes over (outer tracers) become explicit arguments,
    # as a custom VJP needs.
    converted, consts = jax.closure_convert(pure, *dyn)
    return _call(converted, *dyn, *consts)
  return wrapped


def late_switch(index, branches, *operands):
  r"""``lax.switch(index, branches, *operands)`` whose backward pass recomputes the branch taken.

  The forward pass computes :math:`y = f_i(x)` and keeps only :math:`i` and :math:`x`; the
  backward pass waits for :math:`\bar y` (as :func:`late_checkpoint`) and runs one switch whose
  branch :math:`k` recomputes :math:`f_k` and returns :math:`\bar x = \partial f_k(x)^\top
  \bar y`. Same values and gradients as ``lax.switch``; what differs from
  ``late_checkpoint(lambda i, *x: lax.switch(i, branches, *x))`` is the backward program: there
  JAX linearises the whole switch, a forward switch that hands every branch's residuals (merged
  by shape, the unused ones filled with empty values) to a second, transposed switch; here each
  branch's residuals stay inside that branch and the backward pass holds one switch, not two.

  Args:
    index: integer scalar, clamped to the branches as ``lax.switch`` does.
    branches: functions of ``*operands`` with outputs of one structure; they may close over
      traced values (hoisted by ``jax.closure_convert``).
    *operands: pytrees of floating-point arrays.

  Returns:
    ``branches[index](*operands)``.
  """
  converted = [jax.closure_convert(branch, *operands) for branch in branches]
  fns = tuple(fn for fn, _ in converted)
  consts = tuple(tuple(c) for _, c in converted)
  return _switch(fns, index, operands, consts)


def _branch(fns, k):
  return lambda operands, consts: fns[k](*operands, *consts[k])


def _plain_switch(fns, index, operands, consts):
  return jax.lax.switch(index, [_branch(fns, k) for k in range(len(fns))], operands, consts)


_switch = functools.partial(jax.custom_vjp, nondiff_argnums=(0,))(_plain_switch)


def _switch_fwd(fns, index, operands, consts):
  # The plain switch, not _switch: forward-over-reverse differentiates this function.
  return _plain_switch(fns, index, operands, consts), (index, operands, consts)


def _switch_bwd(fns, res, ct):
  index, operands, consts = res
  operands, consts = _after((operands, consts), ct)  # the recomputation waits for ct

  def vjp_branch(k):
    def run(operands, consts, ct):
      _, vjp = jax.vjp(_branch(fns, k), operands, consts)
      return vjp(ct)
    return run

  d_operands, d_consts = jax.lax.switch(index, [vjp_branch(k) for k in range(len(fns))],
                                        operands, consts, ct)
  return None, d_operands, d_consts  # None: the integer index has no cotangent


_switch.defvjp(_switch_fwd, _switch_bwd)


def _lifted_late_checkpoint(fn, variables=True, rngs=True, static_argnums=()):
  """``flax.core.lift.checkpoint`` with :func:`late_checkpoint` in place of ``jax.checkpoint``."""
  def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
    def rematted(variable_groups, rng_groups, *args):
      scope = scope_fn(variable_groups, rng_groups)
      y = fn(scope, *args)
      return y, repack_fn(scope)
    static = tuple(i + 2 for i in static_argnums)  # after variable_groups and rng_groups
    return late_checkpoint(rematted, static_argnums=static)(variable_groups, rng_groups, *args)
  return lift.pack(inner, (variables,), (variables,), (rngs,), name="remat")


def remat(target, static_argnums: Sequence[int] = ()):
  """A Flax module class rematerialised with :func:`late_checkpoint`, as ``nn.remat(target)``.

  ``static_argnums`` counts the module as argument 0 (``nn.remat``'s convention); call the wrapped
  module with positional arguments only (keyword arguments are not lifted).
  """
  return nn.transforms.lift_transform(
      _lifted_late_checkpoint, target, static_argnums=tuple(i - 1 for i in static_argnums))
