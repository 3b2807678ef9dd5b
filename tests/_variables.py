"""Variables of a supernet with its init's shapes, for tests that must not compile an init."""

import jax
import jax.numpy as jnp
import numpy as np


def filled_variables(model, seed, image=(8, 8, 3)):
  """``model.init``'s variable tree (from ``jax.eval_shape``, nothing compiled), every leaf drawn
  from N(0, 1) by a NumPy generator seeded with ``seed``; mixing weights all ones at init."""
  alphas = jax.eval_shape(model.init_alphas, jax.random.key(0))
  w = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), alphas)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(image)), w,
                                             train=False))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
