"""Published genotypes by name: the cells that DARTS-family papers searched and then trained.

Each entry is transcribed from the authors' public code (``owner/repo:path``, variable name in
brackets) into a :class:`jaxnas.derive.Genotype`; none is re-derived or guessed. The figures in the
comments are the published ones (CIFAR-10, C = 36, L = 20; quark0/darts-style counts leave the
auxiliary head out); ``tests/test_evalnet.py`` checks that the parameter count of each genotype,
worked out by a per-op formula, rounds to the published one.

``get(name)`` returns a genotype; ``NAMES`` lists them. DARTS-space genotypes list, node by node,
each intermediate node's two ``(op, input state)`` pairs; FairDARTS' list ``(op, node, input)``
triples (a node may have any number of inputs, none included); NAS-Bench-201 genotypes are
benchmark architecture strings.
"""

from __future__ import annotations

from jaxnas.derive import Genotype, genotype_from_nb201_string
from jaxnas.errors import unknown_name

__all__ = ["GENOTYPES", "NAMES", "get"]

_CONCAT = (2, 3, 4, 5)


def _darts(normal, reduce) -> Genotype:
  return Genotype(normal=normal, normal_concat=_CONCAT, reduce=reduce, reduce_concat=_CONCAT)


GENOTYPES: dict[str, Genotype] = {
    # DARTS, first order (Liu et al., ICLR 2019); quark0/darts:cnn/genotypes.py [DARTS_V1].
    # Published: 3.3M parameters.
    "DARTS_V1": _darts(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
    # DARTS, second order (Liu et al., ICLR 2019); quark0/darts:cnn/genotypes.py [DARTS_V2].
    # Published: 3.3M parameters.
    "DARTS_V2": _darts(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
    # PC-DARTS (Xu et al., ICLR 2020); yuhuixu1993/PC-DARTS:genotypes.py [PC_DARTS_cifar].
    # Published: 3.6M parameters.
    "PC_DARTS": _darts(
        normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]),
    # P-DARTS (Chen et al., ICCV 2019); chenxin061/pdarts:genotypes.py [PDARTS].
    # Published: 3.4M parameters.
    "PDARTS": _darts(
        normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)]),
    # SDARTS-RS (Chen & Hsieh, ICML 2020); xiangning-chen/SmoothDARTS:sota/cnn/genotypes.py
    # [c10_s5_random]: CIFAR-10 on space "s5", the original DARTS space (sota/cnn/spaces.py).
    # The repository does not say which run the paper's table reports; not checked against it.
    "SDARTS_RS": _darts(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 0),
                ("sep_conv_3x3", 3), ("skip_connect", 1), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2)],
        reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("dil_conv_5x5", 3), ("max_pool_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_5x5", 3)]),
    # SDARTS-ADV (Chen & Hsieh, ICML 2020); xiangning-chen/SmoothDARTS:sota/cnn/genotypes.py
    # [c10_s5_pgd]. As SDARTS_RS: not checked against the paper's table.
    "SDARTS_ADV": _darts(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 0),
                ("sep_conv_5x5", 0), ("dil_conv_3x3", 3), ("dil_conv_3x3", 4), ("skip_connect", 0)],
        reduce=[("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("skip_connect", 3), ("skip_connect", 2), ("skip_connect", 2), ("sep_conv_5x5", 4)]),
    # DrNAS (Chen et al., ICLR 2021); xiangning-chen/DrNAS:DARTS-space/genotypes.py
    # [DrNAS_cifar10]. README: 4.1M parameters.
    "DRNAS": _darts(
        normal=[("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("dil_conv_5x5", 3)],
        reduce=[("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("sep_conv_5x5", 1),
                ("sep_conv_5x5", 1), ("dil_conv_5x5", 3), ("skip_connect", 4), ("sep_conv_5x5", 1)]),
    # FairDARTS (Chu et al., ECCV 2020), the seven searches of its README's stability table;
    # xiaomi-automl/FairDARTS:fairdarts/genotypes.py [FairDARTS_a .. FairDARTS_g]. Triples
    # (op, node, input); a node without inputs is left out of the cell (``DCOCell``). README:
    # a 2.83M / 373M mult-adds, b 3.88M / 536M, c 2.59M / 400M, d 3.84M / 532M, e 3.12M / 414M,
    # f 3.62M / 497M, g 3.38M / 453M (parameters / FLOPs by thop, batch norm removed; the
    # parameter figures include the auxiliary head, except c's, which matches the count without).
    "FAIRDARTS_A": Genotype(
        normal=[("sep_conv_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("max_pool_3x3", 4, 0),
                ("sep_conv_3x3", 5, 0)], normal_concat=_CONCAT,
        reduce=[("max_pool_3x3", 2, 0), ("avg_pool_3x3", 2, 1), ("avg_pool_3x3", 3, 0),
                ("dil_conv_5x5", 3, 1), ("avg_pool_3x3", 4, 0), ("sep_conv_5x5", 4, 1),
                ("skip_connect", 5, 0), ("skip_connect", 5, 1)], reduce_concat=_CONCAT),
    "FAIRDARTS_B": Genotype(
        normal=[("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("sep_conv_3x3", 3, 1),
                ("dil_conv_3x3", 4, 0), ("sep_conv_5x5", 4, 1), ("dil_conv_5x5", 5, 1)],
        normal_concat=_CONCAT,
        reduce=[("skip_connect", 2, 0), ("dil_conv_3x3", 2, 1), ("skip_connect", 3, 0),
                ("dil_conv_3x3", 3, 1), ("max_pool_3x3", 4, 0), ("sep_conv_3x3", 4, 1),
                ("skip_connect", 5, 2), ("max_pool_3x3", 5, 0)], reduce_concat=_CONCAT),
    "FAIRDARTS_C": Genotype(
        normal=[("max_pool_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("dil_conv_3x3", 4, 0),
                ("dil_conv_5x5", 4, 2), ("skip_connect", 5, 3), ("sep_conv_3x3", 5, 0)],
        normal_concat=_CONCAT,
        reduce=[("dil_conv_3x3", 2, 1), ("dil_conv_5x5", 2, 0), ("dil_conv_3x3", 3, 0),
                ("sep_conv_3x3", 3, 1), ("sep_conv_5x5", 4, 0), ("sep_conv_5x5", 4, 3),
                ("sep_conv_5x5", 5, 0), ("skip_connect", 5, 1)], reduce_concat=_CONCAT),
    "FAIRDARTS_D": Genotype(
        normal=[("sep_conv_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("dil_conv_3x3", 3, 1),
                ("max_pool_3x3", 3, 0), ("dil_conv_3x3", 4, 0), ("dil_conv_3x3", 4, 1),
                ("sep_conv_3x3", 5, 0), ("dil_conv_5x5", 5, 1)], normal_concat=_CONCAT,
        reduce=[("max_pool_3x3", 2, 0), ("sep_conv_5x5", 2, 1), ("avg_pool_3x3", 3, 0),
                ("dil_conv_5x5", 3, 2), ("dil_conv_3x3", 4, 3), ("avg_pool_3x3", 4, 0),
                ("avg_pool_3x3", 5, 0), ("skip_connect", 5, 3)], reduce_concat=_CONCAT),
    "FAIRDARTS_E": Genotype(
        normal=[("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("dil_conv_3x3", 4, 1),
                ("dil_conv_3x3", 4, 2), ("dil_conv_3x3", 5, 0), ("dil_conv_5x5", 5, 1)],
        normal_concat=_CONCAT,
        reduce=[("max_pool_3x3", 2, 1), ("max_pool_3x3", 2, 0), ("max_pool_3x3", 3, 1),
                ("max_pool_3x3", 3, 0), ("sep_conv_5x5", 4, 1), ("max_pool_3x3", 4, 0),
                ("avg_pool_3x3", 5, 0), ("dil_conv_5x5", 5, 1)], reduce_concat=_CONCAT),
    "FAIRDARTS_F": Genotype(
        normal=[("max_pool_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("dil_conv_3x3", 3, 1),
                ("sep_conv_5x5", 4, 1), ("sep_conv_3x3", 5, 0), ("sep_conv_3x3", 5, 1)],
        normal_concat=_CONCAT,
        reduce=[("max_pool_3x3", 2, 0), ("max_pool_3x3", 2, 1), ("max_pool_3x3", 3, 0),
                ("dil_conv_3x3", 3, 1), ("dil_conv_3x3", 4, 2), ("max_pool_3x3", 4, 0),
                ("max_pool_3x3", 5, 0), ("sep_conv_3x3", 5, 1)], reduce_concat=_CONCAT),
    "FAIRDARTS_G": Genotype(
        normal=[("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 2, 1), ("skip_connect", 4, 3),
                ("sep_conv_5x5", 4, 1), ("dil_conv_3x3", 5, 0), ("sep_conv_3x3", 5, 1)],
        normal_concat=_CONCAT,
        reduce=[("avg_pool_3x3", 2, 1), ("skip_connect", 2, 0), ("skip_connect", 3, 2),
                ("max_pool_3x3", 3, 1), ("sep_conv_5x5", 4, 3), ("max_pool_3x3", 4, 0),
                ("dil_conv_3x3", 5, 1), ("dil_conv_3x3", 5, 4)], reduce_concat=_CONCAT),
    # ResNet as a NAS-Bench-201 cell (Dong & Yang, ICLR 2020); D-X-Y/AutoDL-Projects:
    # exps/NATS-Bench/draw-table.py ["resnet"].
    "NB201_RESNET": genotype_from_nb201_string(
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"),
}

NAMES = tuple(GENOTYPES)


def get(name: str) -> Genotype:
  """The published genotype registered as ``name`` (case-insensitive, ``-`` read as ``_``).

  >>> get("darts_v2").normal[:2]
  (('sep_conv_3x3', 0), ('sep_conv_3x3', 1))

  Raises:
    JaxnasError: if ``name`` is not in :data:`NAMES` (the message lists them).
  """
  key = str(name).upper().replace("-", "_")
  if key not in GENOTYPES:
    raise unknown_name("genotype", name, NAMES)
  return GENOTYPES[key]
