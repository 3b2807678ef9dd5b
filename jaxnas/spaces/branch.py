"""D2NAS' branch cells: cells whose architecture alone is updated.

D2NAS (Hou, "Decoupled Differentiable Neural Architecture Search: Memory-Efficient Differentiable
NAS via Disentangled Search Space", ICML 2024 workshop Differentiable Almost Everything,
OpenReview 89Rhpuz1qV) says in its abstract that "the branch structure is designed to decouple
the weight update of the trainable parameters from the backbone network, and the candidate
operation selection is redesigned with Gumbel-Softmax"; issue 5 describes it as "the disentangled
space with branch cells whose architecture alone is updated". Only the abstract could be read and
no public code was found, so the construction below is jaxnas' reading of those two sentences.

The supernet (:class:`jaxnas.spaces.darts.DartsSearchNetwork` or its sampled path,
:class:`jaxnas.spaces.sampled.SampledDartsSearchNetwork`) is split in two:

- the **backbone**: the stem, every cell's two preprocessing layers (ReLU–1×1 conv–BN, or
  FactorizedReduce after a reduction) and the classifier. The weight step trains these weights.
- the **branch cells**: every cell's candidate operations, i.e. its 14 mixed edges (the edge groups
  ``cell_i/from_j``). Their weights stay at their initial values; what is learnt in them is the
  architecture alone, α, by the architecture step (D2NAS' sampler: a Gumbel-softmax operation per
  edge and exactly two input edges per node, :func:`jaxnas.sampling.d2nas_gumbel`).

What that buys: the weight optimiser keeps no momentum for the branch weights (the bulk of a DARTS
supernet's weights), and the weight step computes no gradient for them: they enter the loss through
``stop_gradient`` (:func:`jaxnas.search.make_mixing_loss`), so XLA drops those products; the
architecture gradient still flows through the branch operations' outputs to α.

Choices where the paper is silent (jaxnas'):

- which weights are the branch: all candidate operations of every cell, normal and reduction;
- they keep their initialisation (no pretraining), and the weight decay does not shrink them
  (their updates are exactly zero: :func:`jaxnas.search.make_optimizers` with ``frozen``);
- their batch norms (affine-free, no weights) still normalise with the batch's statistics in
  training and still update their running statistics, which are statistics, not trained weights;
- the order and estimator stay d2nas' (weight step first, first-order architecture step).
"""

from __future__ import annotations

import jax

from jaxnas.spaces.darts import DartsSearchNetwork
from jaxnas.spaces.sampled import SampledDartsSearchNetwork

__all__ = ["branch_weights", "BranchDartsSearchNetwork", "SampledBranchDartsSearchNetwork"]


def branch_weights(params):
  """True at every weight of a branch cell (under an edge group ``from_*``), False elsewhere."""
  def mark(path, _):
    return any(getattr(p, "key", "").startswith("from_") for p in path)
  return jax.tree_util.tree_map_with_path(mark, params)


class BranchDartsSearchNetwork(DartsSearchNetwork):
  """The DARTS supernet with D2NAS' branch cells: ``frozen_weights`` marks their weights."""

  branch_cells = True

  def frozen_weights(self, params):
    """The weights the weight step leaves at their initial values (:func:`branch_weights`)."""
    return branch_weights(params)


class SampledBranchDartsSearchNetwork(SampledDartsSearchNetwork):
  """The sampled-operation DARTS supernet with D2NAS' branch cells (the ``d2nas-branch`` recipe)."""

  branch_cells = True

  def frozen_weights(self, params):
    """The weights the weight step leaves at their initial values (:func:`branch_weights`)."""
    return branch_weights(params)
