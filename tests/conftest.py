"""Test-wide numerics: float64 and strict dtype promotion, set once here and nowhere else."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
# XLA compile time dominates these tiny problems on CPU: skip the expensive optimisation passes
# (as flax's own example tests do). Numbers are unchanged; only compile and run speed trade places.
jax.config.update("jax_disable_most_optimizations", True)
