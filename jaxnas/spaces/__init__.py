"""Search spaces: Flax Linen supernets that take mixing weights as an argument.

A space is a Linen module whose ``__call__(x, weights, *, train)`` takes the relaxation's output,
plus ``init_alphas(key)``, ``alpha_shapes()``, ``op_names`` and ``default_rule`` (the derivation
rule's name). ``get(name, **config)`` builds one from the registry.
"""

from __future__ import annotations

import dataclasses

from jaxnas.errors import JaxnasError, unknown_name
from jaxnas.spaces.darts import DARTS_EDGES, DARTS_OPS, DartsSearchNetwork
from jaxnas.spaces.nb201 import NB201_EDGES, NB201_OPS, NB201SearchNetwork

__all__ = ["SPACES", "get", "check_weights", "DartsSearchNetwork", "NB201SearchNetwork",
           "DARTS_OPS", "DARTS_EDGES", "NB201_OPS", "NB201_EDGES"]

SPACES = {"darts": DartsSearchNetwork, "nb201": NB201SearchNetwork}


def get(name: str, **config):
  """Returns the supernet module of space ``name`` built with ``config`` (channels, ...).

  ``sampled=True`` (the sampling recipes' space option) gives the sampled-operation path of
  :mod:`jaxnas.spaces.sampled`: same parameters, only the sampled operations computed (DARTS; on
  NAS-Bench-201 the full supernet that accepts two-path weights). ``branch_cells=True`` (DARTS
  only; D2NAS) gives the same supernet with D2NAS' branch cells, whose candidate operations keep
  their initial weights (:mod:`jaxnas.spaces.branch`).
  """
  if name not in SPACES:
    raise unknown_name("search space", name, SPACES)
  known = {f.name for f in dataclasses.fields(SPACES[name])} | {"sampled", "branch_cells"}
  unknown = sorted(set(config) - known)
  if unknown:  # e.g. PC-DARTS' partial_channels on nb201
    raise JaxnasError(f"the {name} space has no option {', '.join(unknown)} (a method's space "
                      f"options or a flag); use a space that has it, e.g. --space darts")
  if config.pop("branch_cells", False):
    if name != "darts":
      raise JaxnasError("branch_cells (D2NAS) is an option of the darts space; add --space darts")
    from jaxnas.spaces import branch  # noqa: PLC0415
    return (branch.SampledBranchDartsSearchNetwork if config.pop("sampled", False)
            else branch.BranchDartsSearchNetwork)(**config)
  if config.pop("sampled", False):
    from jaxnas.spaces import sampled  # noqa: PLC0415
    return {"darts": sampled.SampledDartsSearchNetwork,
            "nb201": sampled.GatedNB201SearchNetwork}[name](**config)
  return SPACES[name](**config)


def check_weights(weights, expected: dict, space: str) -> None:
  """Raises a one-line JaxnasError unless ``weights`` has exactly the ``expected`` keys and shapes."""
  if not isinstance(weights, dict) or set(weights) != set(expected):
    got = sorted(weights) if isinstance(weights, dict) else type(weights).__name__
    raise JaxnasError(f"the {space} space expects alphas/weights with keys {sorted(expected)}, "
                      f"got {got}")
  for k, shape in expected.items():
    got = tuple(getattr(weights[k], "shape", ()))
    if got != tuple(shape):
      raise JaxnasError(f"alphas[{k!r}] has shape {got} but the {space} space expects "
                        f"{tuple(shape)}")
