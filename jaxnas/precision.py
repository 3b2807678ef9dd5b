"""Mixed precision: bfloat16 activations, float32 master weights (``jaxnas search --dtype``).

:class:`MixedPrecision` wraps a search-space module. Its ``init`` is the wrapped module's (float32
parameters and statistics, the master copy that the optimisers update); its ``apply`` runs the same
network built with ``dtype=compute_dtype``:

    logits = f32( net_bf16(bf16(x), bf16(mixing); bf16(w), bf16(stats)) ),
    new stats = f32(new stats_bf16)

so convolutions, pools and batch norms run in bfloat16 while gradients flow back through the casts
to the float32 weights and alphas (Micikevicius et al., "Mixed Precision Training", ICLR 2018; with
bfloat16's float32 exponent range no loss scaling is needed). The cross-entropy is computed on the
float32 logits. Everything else (hypergradient estimators, optimisers, derivation) sees the float32
interface of the wrapped module unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnas.errors import JaxnasError

__all__ = ["DTYPES", "MixedPrecision", "wrap"]

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def _cast(tree, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


class MixedPrecision:
  """``model`` with its forward pass in ``compute_dtype`` and its variables in ``model.dtype``."""

  def __init__(self, model, compute_dtype):
    self.model = model
    self.compute_dtype = jnp.dtype(compute_dtype)
    self.compute_model = model.clone(dtype=compute_dtype)

  def __getattr__(self, name: str) -> Any:  # op_names, init, init_alphas, dtype, ...
    return getattr(self.model, name)

  def apply(self, variables, x, weights, *, train: bool, mutable=False, **kwargs):
    """The wrapped module's ``apply``, computed in ``compute_dtype``; outputs in ``model.dtype``."""
    dtype, out_dtype = self.compute_dtype, self.model.dtype
    out = self.compute_model.apply(_cast(variables, dtype), x.astype(dtype),
                                   _cast(weights, dtype), train=train, mutable=mutable, **kwargs)
    if mutable:
      logits, new_vars = out
      return logits.astype(out_dtype), _cast(new_vars, out_dtype)
    return out.astype(out_dtype)


def wrap(model, dtype: str):
  """``model`` for ``--dtype dtype``: itself for float32, :class:`MixedPrecision` for bfloat16."""
  if dtype not in DTYPES:
    raise JaxnasError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
  return model if DTYPES[dtype] is None else MixedPrecision(model, DTYPES[dtype])
