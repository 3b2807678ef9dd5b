"""Test-wide numerics: float64 and strict dtype promotion, set once here and nowhere else."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
