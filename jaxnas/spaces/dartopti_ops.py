"""DARTOpti's extended operation set S_o and hand-made networks encoded as per-cell genotypes.

D-DARTS §4.4 (Heuillet et al., 2023): a hand-made network is written as a few distinct cells
("one cell per distinct layer type") and a sequence saying which cell each position of the
network uses; the search then starts from that architecture (alphas initialised so its
operations dominate) over the 12 operations of S_o. This module holds the data: the operation
names in the authors' order (``genotypes.py:PRIMITIVES`` of aheuillet/D-DARTS), the ResNet-18 and
ResNet-50 encodings (``genotypes.py:ResNet18``, ``ResNet50``) and the alphas they start from.
The supernet that runs S_o is the darts space with ``op_set="dartopti"`` (the 12-op edge group is
:class:`jaxnas.spaces.dartopti.DartoptiEdgeGroup`); ``init_genotype="resnet18"`` (``jaxnas search
--method dartopti --init-genotype resnet18``) shapes it after a network here and starts its alphas
from :func:`genotype_alphas`; the ``dartopti`` recipe adds the 5-epoch warm start.

The five operations S_o adds to DARTS' seven (``operations.py:OPS`` of the authors' code,
implemented in :mod:`jaxnas.spaces.dartopti`):

- ``conv_3x1_1x3``: ReLU → conv (1×3, stride (1, s)) → conv (3×1, stride (s, 1)) → BN;
- ``conv_7x1_1x7``: ReLU → conv (1×7) → conv (7×1) → BN, strides as above;
- ``simple_conv_1x1`` / ``simple_conv_3x3``: ReLU → conv k×k (stride s) → BN;
- ``bottleneck_1x3x1``: ReLU → 1×1 → BN → 3×3 (stride s) → BN → 1×1 to 4C → BN → ReLU → 1×1 back
  to C → BN (``ResConv``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["DARTOPTI_OPS", "HandmadeNetwork", "HANDMADE", "handmade", "edge_index",
           "genotype_alphas", "GENOTYPE_LOGIT"]

DARTOPTI_OPS = ("conv_3x1_1x3", "conv_7x1_1x7", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                "simple_conv_1x1", "simple_conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
                "dil_conv_3x3", "dil_conv_5x5", "bottleneck_1x3x1")

# The authors' deserialize_architecture_to_alphas sets the genotype's operations to 10 and leaves
# every other logit at 0: σ(10) ≈ 0.99995 against σ(0) = 1/2.
GENOTYPE_LOGIT = 10.0


class HandmadeNetwork(NamedTuple):
  """A hand-made network as D-DARTS' ``Genotype_opt``.

  Attributes:
    genes: the distinct cells, each a tuple of ``(op, node, input)`` triples.
    seq: for each position of the network, the index of its cell in ``genes``; positions with the
      same index share alphas (in the authors' code, not weights: every position is its own
      module).
    concat: the states concatenated into a cell's output.
    reductions: the positions that reduce (stride 2 on the edges from the cell inputs).
  """

  genes: tuple
  seq: tuple
  concat: tuple
  reductions: tuple

  @property
  def steps(self) -> int:
    """Intermediate nodes per cell, ``concat[-1] - 1`` as the authors' code."""
    return self.concat[-1] - 1


# Two basic blocks: node 2 = conv3(s0); node 3 = conv3(node 2) + s0; node 4 = conv3(node 3);
# node 5 = conv3(node 4) + node 3.
_RESNET_BASIC = (("simple_conv_3x3", 2, 0), ("simple_conv_3x3", 3, 2), ("skip_connect", 3, 0),
                 ("simple_conv_3x3", 4, 3), ("simple_conv_3x3", 5, 4), ("skip_connect", 5, 3))
# Bottleneck blocks with identity shortcuts, chained node to node.
_RESNET_BOTTLENECK = (("bottleneck_1x3x1", 2, 0), ("skip_connect", 2, 0),
                      ("bottleneck_1x3x1", 3, 2), ("skip_connect", 3, 2),
                      ("bottleneck_1x3x1", 4, 3), ("skip_connect", 4, 3))
_MORE = (("bottleneck_1x3x1", 5, 4), ("skip_connect", 5, 4))
_EVEN_MORE = _MORE + (("bottleneck_1x3x1", 6, 5), ("skip_connect", 6, 5),
                      ("bottleneck_1x3x1", 7, 6), ("skip_connect", 7, 6))

HANDMADE = {
    "resnet18": HandmadeNetwork(genes=(_RESNET_BASIC,), seq=(0, 0, 0, 0), concat=(2, 3, 4, 5),
                                reductions=(1, 2, 3)),
    "resnet50": HandmadeNetwork(
        genes=(_RESNET_BOTTLENECK, _RESNET_BOTTLENECK + _MORE, _RESNET_BOTTLENECK + _EVEN_MORE),
        seq=(0, 1, 2, 0), concat=(2, 3, 4, 5, 6, 7), reductions=(1, 2, 3)),
}


def handmade(name: str) -> HandmadeNetwork:
  """The hand-made network called ``name`` (``resnet18``, ``resnet50``)."""
  if name not in HANDMADE:
    raise unknown_name("hand-made network", name, HANDMADE)
  return HANDMADE[name]


def edge_index(node: int, src: int) -> int:
  """Row of edge ``src → node`` in a cell's alphas: nodes 2, 3, ... own 2, 3, ... rows in turn.

  ``sum_{i < node - 2} (i + 2) + src``, as ``deserialize_architecture_to_alphas``.

  >>> edge_index(2, 0), edge_index(3, 2), edge_index(5, 4), edge_index(7, 6)
  (0, 4, 13, 26)
  """
  if node < 2 or not 0 <= src < node:
    raise JaxnasError(f"edge {src} -> {node} is not an edge of a cell: a node ≥ 2 reads an earlier "
                      "state")
  return sum(i + 2 for i in range(node - 2)) + src


def genotype_alphas(network: HandmadeNetwork, *, on: float = GENOTYPE_LOGIT, off: float = 0.0,
                    op_names=DARTOPTI_OPS) -> np.ndarray:
  """Initial alphas of a search started from ``network``: one ``(E, |S_o|)`` slice per cell.

  ``on`` (10) at each of the genotype's (edge, op) entries, ``off`` (0) elsewhere, as the
  authors' ``deserialize_architecture_to_alphas``: under the sigmoid relaxation the genotype's
  operations start at σ(10) ≈ 1 and the others at σ(0) = 1/2. ``E = Σ_{i < steps} (i + 2)``
  (14 for ResNet-18's four nodes, 27 for ResNet-50's six).

  Returns:
    float64 array ``(len(network.genes), E, len(op_names))``.
  """
  names = tuple(op_names)
  edges = edge_index(network.steps + 1, network.steps) + 1
  alphas = np.full((len(network.genes), edges, len(names)), float(off))
  for c, genes in enumerate(network.genes):
    for op, node, src in genes:
      if op not in names:
        raise unknown_name("operation", op, names)
      alphas[c, edge_index(node, src), names.index(op)] = on
  return alphas
