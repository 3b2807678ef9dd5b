"""Published genotypes by name: the cells that DARTS-family papers searched and then trained.

Each entry is transcribed from the authors' public code (``owner/repo:path``, variable name in
brackets) into a :class:`jaxnas.derive.Genotype`; none is re-derived or guessed. The figures in the
comments are published ones, as read in the named READMEs (CIFAR-10, C = 36, L = 20).

Counted by :mod:`jaxnas.evalnet` (C = 36, L = 20, 10 classes; parameters without / with the
auxiliary head; multiply-adds of convolutions and linear layers in one 32×32 forward pass), each
equal to a per-op formula in ``tests/test_evalnet.py``:

=============  ==========  ==========  ==========
name           params      with aux    mult-adds
=============  ==========  ==========  ==========
DARTS_V1       3,169,414   3,645,840   501.0M
DARTS_V2       3,349,342   3,825,768   528.4M
PC_DARTS       3,634,678   4,111,104   556.7M
PDARTS         3,433,798   3,910,224   532.2M
SDARTS_RS      3,606,166   4,082,592   562.4M
SDARTS_ADV     3,344,806   3,821,232   526.8M
DRNAS          4,099,294   4,575,720   635.1M
FAIRDARTS_A    2,360,782   2,837,208   371.5M
FAIRDARTS_B    3,407,878   3,884,304   536.5M
FAIRDARTS_C    2,598,814   3,075,240   400.0M
FAIRDARTS_D    3,365,542   3,841,968   532.5M
FAIRDARTS_E    2,643,742   3,120,168   414.7M
FAIRDARTS_F    3,151,054   3,627,480   497.6M
FAIRDARTS_G    2,899,054   3,375,480   453.4M
=============  ==========  ==========  ==========

DARTS_V2's 3,349,342 is quark0/darts' own count (``count_parameters_in_MB`` leaves the auxiliary
head out); FairDARTS' README figures (thop) include the head for six of its seven cells.

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
    "DARTS_V1": _darts(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
    # DARTS, second order (Liu et al., ICLR 2019); quark0/darts:cnn/genotypes.py [DARTS_V2].
    # quark0/darts README: 3.3M parameters. FairDARTS README: 3.36M, 522M FLOPs (thop).
    "DARTS_V2": _darts(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
    # PC-DARTS (Xu et al., ICLR 2020); yuhuixu1993/PC-DARTS:genotypes.py [PC_DARTS_cifar].
    # PC-DARTS README: 3.6M parameters. FairDARTS README: 3.63M, 558M FLOPs (thop).
    "PC_DARTS": _darts(
        normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]),
    # P-DARTS (Chen et al., ICCV 2019); chenxin061/pdarts:genotypes.py [PDARTS].
    # FairDARTS README: 3.43M parameters, 532M FLOPs (thop).
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
