"""Derivation: from mixing weights to a discrete architecture, a :class:`Genotype`.

A derivation rule is a pure function ``rule(weights, op_names) -> Genotype`` of the *mixing
weights*, the output of a relaxation (``softmax(alphas)`` for DARTS), not of the raw logits: the
DARTS rule compares weights across edges, which only means something after each edge's
normalisation. Rules are looked up by name in :data:`RULES` and run on NumPy on the host.

Layouts (fixed by the search spaces):

- DARTS: ``weights = {"normal": (14, 8), "reduce": (14, 8)}``, operations in the order of
  :data:`DARTS_OPS`. Intermediate node ``i = 0 .. 3`` (state ``i + 2``; states 0 and 1 are the
  cell's inputs) has one incoming edge from each state ``0 .. i + 1``; edges are numbered node by
  node, so node 0 owns edges 0-1, node 1 edges 2-4, node 2 edges 5-8, node 3 edges 9-13
  (:func:`darts_edge_sources`).
- NAS-Bench-201: ``weights = {"cell": (6, 5)}``, operations in the order of :data:`NB201_OPS`,
  edges ``i <- j`` in the sorted key order ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``
  (:data:`NB201_EDGES`).

Ties go to the lowest index, always: among equally strong edges the one from the lower-numbered
state, among equally heavy operations the one earlier in ``op_names`` (as in quark0/darts, whose
stable sort and strict ``>`` do the same).
"""

from __future__ import annotations

import json
import operator
import os
import pathlib
from collections.abc import Mapping
from typing import Callable, NamedTuple

import numpy as np

from jaxnas.errors import JaxnasError, unknown_name

__all__ = [
    "DARTS_OPS",
    "NB201_OPS",
    "NB201_EDGES",
    "DARTS_NUM_NODES",
    "SPACES",
    "GENOTYPE_FILE",
    "Genotype",
    "darts_edge_sources",
    "output_states",
    "nb201_arch_string",
    "genotype_from_nb201_string",
    "darts_top2",
    "nb201_argmax",
    "fairdarts_sparse",
    "fairdarts_edge",
    "darts_plus_skip_limit",
    "pr_darts_top2",
    "pc_darts_top2",
    "FAIRDARTS_THRESHOLD",
    "RULES",
    "derive",
]

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
             "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DARTS_NUM_NODES = 4
# (to node, from node) per NAS-Bench-201 edge, in the benchmark's sorted key order "i<-j".
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
SPACES = ("darts", "nb201")
GENOTYPE_FILE = "genotype.json"
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat", "space")


def darts_edge_sources(num_nodes: int = DARTS_NUM_NODES) -> tuple[tuple[int, int], ...]:
  """``(node, from_state)`` for each edge of a DARTS cell, in edge order.

  Node ``i`` is intermediate node ``i`` (state ``i + 2``); it reads states ``0 .. i + 1``.

  >>> darts_edge_sources()[:5]
  ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2))
  >>> len(darts_edge_sources())
  14
  """
  return tuple((i, j) for i in range(num_nodes) for j in range(i + 2))


# --- Genotype ---------------------------------------------------------------------------------


class _GenotypeFields(NamedTuple):
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...] = ()
  reduce_concat: tuple[int, ...] = ()
  space: str = "darts"


class Genotype(_GenotypeFields):
  """A derived architecture: frozen, hashable, JSON-serialisable.

  For ``space="darts"`` (the reference's ``Genotype``), ``normal`` and ``reduce`` list, node by
  node, each intermediate node's two ``(op, from_state)`` inputs, the stronger first;
  ``*_concat`` are the states concatenated into the cell's output. A darts cell may instead list
  ``(op, to_state, from_state)`` triples, FairDARTS' notation (``fairdarts/genotypes.py``), in
  which a node has any number of inputs, none included (a node without inputs is left out of the
  cell, as FairDARTS' ``DCOCell`` does); triples are in non-decreasing ``to_state`` order and all
  genes of a cell take one form. For ``space="nb201"``,
  ``normal`` lists the six ``(op, from_node)`` pairs in :data:`NB201_EDGES` order,
  ``normal_concat=(3,)`` and the reduce fields are empty.

  Lists (as read from JSON) become tuples and NumPy scalars become Python values, so equal
  architectures compare and hash equal. ``str(genotype)`` is the reference notation: quark0/darts'
  ``Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])``, or the
  NAS-Bench-201 architecture string.

  Attributes:
    normal: ``(op, input)`` pairs (or ``(op, node, input)`` triples) of the normal cell (of the only
      cell for nb201).
    normal_concat: states concatenated into the normal cell's output.
    reduce: ``(op, input)`` pairs of the reduction cell.
    reduce_concat: states concatenated into the reduction cell's output.
    space: ``"darts"`` or ``"nb201"``.

  Raises:
    JaxnasError: on construction, if a field is malformed or the genes do not fit the space.
  """

  __slots__ = ()

  def __new__(cls, normal, normal_concat, reduce=(), reduce_concat=(), space="darts"):
    if space not in SPACES:
      raise unknown_name("genotype space", space, SPACES)
    self = super().__new__(
        cls,
        normal=_genes(normal, "normal"),
        normal_concat=_states(normal_concat, "normal_concat"),
        reduce=_genes(reduce, "reduce"),
        reduce_concat=_states(reduce_concat, "reduce_concat"),
        space=str(space),
    )
    _check_structure(self)
    return self

  @classmethod
  def _make(cls, iterable):
    return cls(*iterable)

  def __str__(self) -> str:
    if self.space == "nb201":
      return nb201_arch_string(self)
    return (f"Genotype(normal={list(self.normal)!r}, normal_concat={list(self.normal_concat)!r}, "
            f"reduce={list(self.reduce)!r}, reduce_concat={list(self.reduce_concat)!r})")

  def to_dict(self) -> dict:
    """A dict of JSON values: pairs become ``[op, input]`` lists (triples ``[op, node, input]``)."""
    return {
        "space": self.space,
        "normal": [list(gene) for gene in self.normal],
        "normal_concat": list(self.normal_concat),
        "reduce": [list(gene) for gene in self.reduce],
        "reduce_concat": list(self.reduce_concat),
    }

  @classmethod
  def from_dict(cls, fields: Mapping) -> Genotype:
    """The inverse of :meth:`to_dict`; ``reduce``, ``reduce_concat`` and ``space`` are optional."""
    if not isinstance(fields, Mapping):
      raise JaxnasError(f"a genotype must be a JSON object, got {type(fields).__name__}")
    unknown = sorted(set(fields) - set(_FIELDS))
    missing = [key for key in ("normal", "normal_concat") if key not in fields]
    if unknown or missing:
      wrong = ([f"has unknown fields {unknown}"] if unknown else []) + (
          [f"lacks {missing}"] if missing else [])
      raise JaxnasError(f"genotype {' and '.join(wrong)}; its fields are {list(_FIELDS)}")
    return cls(**fields)

  def to_json(self) -> str:
    """The genotype as one line of JSON (see :meth:`to_dict`)."""
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, text: str) -> Genotype:
    """Reads :meth:`to_json`'s output."""
    try:
      fields = json.loads(text)
    except json.JSONDecodeError as err:
      raise JaxnasError(f"genotype is not valid JSON ({err}); write it as Genotype.to_json() "
                        "does") from None
    return cls.from_dict(fields)

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes :meth:`to_json` to ``path``, or to ``path/genotype.json`` if ``path`` is a directory.

    Returns:
      The file written.
    """
    path = _genotype_path(path)
    path.write_text(self.to_json() + "\n")
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> Genotype:
    """Reads a file written by :meth:`save` (a directory means its ``genotype.json``)."""
    path = _genotype_path(path)
    if not path.is_file():
      raise JaxnasError(f"no genotype file at {path}; pass a genotype.json or a run directory "
                        "holding one")
    return cls.from_json(path.read_text())


def _genotype_path(path) -> pathlib.Path:
  path = pathlib.Path(path)
  return path / GENOTYPE_FILE if path.is_dir() else path


def _int(value, what: str) -> int:
  if isinstance(value, (bool, np.bool_)):
    raise JaxnasError(f"{what} is {value!r}; expected a whole number")
  try:
    return operator.index(value)
  except TypeError:
    raise JaxnasError(f"{what} is {value!r}; expected a whole number") from None


def _genes(genes, field: str) -> tuple[tuple, ...]:
  if not isinstance(genes, (list, tuple)):
    raise JaxnasError(f"genotype {field} is {genes!r}; expected a list of (op, input) pairs")
  out = []
  for k, gene in enumerate(genes):
    if (not isinstance(gene, (list, tuple)) or len(gene) not in (2, 3)
        or not isinstance(gene[0], str)):
      raise JaxnasError(f"genotype {field}[{k}] is {gene!r}; expected an (op name, input) pair or "
                        "an (op name, node, input) triple")
    if len(gene) == 2:
      out.append((str(gene[0]), _int(gene[1], f"genotype {field}[{k}]'s input")))
    else:
      out.append((str(gene[0]), _int(gene[1], f"genotype {field}[{k}]'s node"),
                  _int(gene[2], f"genotype {field}[{k}]'s input")))
  return tuple(out)


def _states(states, field: str) -> tuple[int, ...]:
  if not isinstance(states, (list, tuple, range, np.ndarray)):
    raise JaxnasError(f"genotype {field} is {states!r}; expected a list of state numbers")
  return tuple(_int(s, f"genotype {field}[{k}]") for k, s in enumerate(states))


def _check_structure(g: Genotype) -> None:
  """Raises if the genes cannot describe a cell of ``g.space``."""
  if g.space == "nb201":
    _check_nb201(g)
    return
  if not g.normal:
    raise JaxnasError("a darts genotype needs at least one node in its normal cell; got none")
  _check_darts_cell(g.normal, g.normal_concat, "normal")
  _check_darts_cell(g.reduce, g.reduce_concat, "reduce")


def _check_nb201(g: Genotype) -> None:
  sources = tuple(gene[-1] if len(gene) == 2 else None for gene in g.normal)
  if (sources != tuple(j for _, j in NB201_EDGES) or g.normal_concat != (3,) or g.reduce
      or g.reduce_concat):
    raise JaxnasError(
        f"an nb201 genotype needs 6 (op, from_node) pairs with from_nodes {[0, 0, 1, 0, 1, 2]}, "
        f"normal_concat [3] and no reduce cell; got inputs {list(sources)}, normal_concat "
        f"{list(g.normal_concat)}, reduce {list(g.reduce)}")


def _check_darts_cell(genes, concat, field: str) -> None:
  """Two inputs per node, node ``k`` (state ``k + 2``) reading states ``0 .. k + 1``; or triples."""
  if len({len(gene) for gene in genes}) > 1:
    raise JaxnasError(f"genotype {field} mixes (op, input) pairs and (op, node, input) triples; "
                      "write every gene of a cell in one form")
  if genes and len(genes[0]) == 3:
    _check_darts_triples(genes, concat, field)
    return
  if len(genes) % 2:
    raise JaxnasError(f"genotype {field} has {len(genes)} genes; a darts cell takes two inputs "
                      "per node, so it needs an even number")
  for k, (op, src) in enumerate(genes):
    if not 0 <= src <= k // 2 + 1:
      raise JaxnasError(f"genotype {field}[{k}] ({op!r}, {src}) reads state {src}, but its node "
                        f"(state {k // 2 + 2}) can only read states 0..{k // 2 + 1}")
  last = len(genes) // 2 + 1
  if genes and (not concat or any(not 2 <= s <= last for s in concat)):
    raise JaxnasError(f"genotype {field}_concat is {list(concat)}; it must list states among "
                      f"2..{last}, the cell's intermediate nodes")
  if not genes and concat:
    raise JaxnasError(f"genotype {field}_concat is {list(concat)} but {field} has no nodes")


def _check_darts_triples(genes, concat, field: str) -> None:
  """FairDARTS' form: ``(op, to, from)`` with ``2 <= to``, ``0 <= from < to``, ``to`` sorted."""
  previous = 2
  for k, (op, to, src) in enumerate(genes):
    if to < 2 or not 0 <= src < to:
      raise JaxnasError(f"genotype {field}[{k}] ({op!r}, {to}, {src}) is not an edge of a darts "
                        "cell: its node must be a state ≥ 2 reading an earlier state")
    if to < previous:
      raise JaxnasError(f"genotype {field}[{k}] ({op!r}, {to}, {src}) comes after a gene of node "
                        f"{previous}; list (op, node, input) triples node by node")
    previous = to
  if not concat or any(s < 2 for s in concat):
    raise JaxnasError(f"genotype {field}_concat is {list(concat)}; it must list states ≥ 2, the "
                      "cell's intermediate nodes")


# --- NAS-Bench-201 architecture strings --------------------------------------------------------


def nb201_arch_string(genotype: Genotype) -> str:
  """The NAS-Bench-201 architecture string of an nb201 genotype.

  >>> g = genotype_from_nb201_string(
  ...     "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|")
  >>> nb201_arch_string(g)
  '|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|'

  Raises:
    JaxnasError: if ``genotype`` is not an nb201 genotype.
  """
  if genotype.space != "nb201":
    raise JaxnasError(f"only nb201 genotypes have a NAS-Bench-201 string; this one's space is "
                      f"{genotype.space!r}")
  nodes = []
  for to in (1, 2, 3):
    genes = [gene for gene, (i, _) in zip(genotype.normal, NB201_EDGES, strict=True) if i == to]
    nodes.append("|" + "|".join(f"{op}~{j}" for op, j in genes) + "|")
  return "+".join(nodes)


def genotype_from_nb201_string(arch: str) -> Genotype:
  """Parses a NAS-Bench-201 architecture string (operations from :data:`NB201_OPS`).

  Raises:
    JaxnasError: if ``arch`` is not of the form ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.
  """
  problem = (f"{arch!r} is not a NAS-Bench-201 architecture string; write it like "
             "'|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|'")
  nodes = arch.strip().split("+") if isinstance(arch, str) else []
  if len(nodes) != 3:
    raise JaxnasError(problem)
  genes = []
  for to, node in enumerate(nodes, start=1):
    if len(node) < 2 or node[0] != "|" or node[-1] != "|":
      raise JaxnasError(problem)
    entries = node[1:-1].split("|")
    if len(entries) != to:
      raise JaxnasError(problem)
    for j, entry in enumerate(entries):
      op, _, src = entry.partition("~")
      if src != str(j):
        raise JaxnasError(problem)
      if op not in NB201_OPS:
        raise unknown_name("NAS-Bench-201 operation", op, NB201_OPS)
      genes.append((op, j))
  return Genotype(normal=genes, normal_concat=(3,), space="nb201")


# --- rules ------------------------------------------------------------------------------------


def _check_op_names(op_names) -> tuple[str, ...]:
  names = tuple(op_names)
  if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
    raise JaxnasError(f"op_names is {list(names)}; pass distinct operation names, one per column "
                      "of the weights")
  return names


def _check_weights(weights, space: str, layout: dict[str, int], op_names) -> dict[str, np.ndarray]:
  """``weights`` as float64 arrays after checking keys, shapes and values against the space.

  Every mismatch is reported in the one message.
  """
  if not isinstance(weights, Mapping) or set(weights) != set(layout):
    got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
    raise JaxnasError(f"weights has keys {got} but the {space} space expects a dict with keys "
                      f"{list(layout)}")
  arrays, problems = {}, []
  for key, rows in layout.items():
    expected = (rows, len(op_names))
    array = np.asarray(weights[key])
    if array.shape != expected:
      problems.append(f"weights[{key!r}] has shape {array.shape} but the {space} space with "
                      f"{len(op_names)} ops expects {expected}")
    elif not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
      problems.append(f"weights[{key!r}] has dtype {array.dtype}; pass real-valued mixing weights")
    elif not np.all(np.isfinite(array)):
      problems.append(f"weights[{key!r}] holds NaN or infinite values; derive from finite mixing "
                      "weights (did the search diverge?)")
    else:
      arrays[key] = array.astype(np.float64)
  if problems:
    raise JaxnasError("; ".join(problems))
  return arrays


def _node_rows(num_nodes: int = DARTS_NUM_NODES):
  """``(node, first_edge, last_edge + 1)`` for each intermediate node of a DARTS cell."""
  start = 0
  for node in range(num_nodes):
    yield node, start, start + node + 2
    start += node + 2


def _not_none(op_names: tuple[str, ...]) -> np.ndarray:
  return np.array([name != "none" for name in op_names])


def _ranked_edges(masked: np.ndarray, start: int, end: int, count: int = 2) -> np.ndarray:
  """The node's ``count`` strongest edges (row offsets), by their best candidate weight."""
  strength = masked[start:end].max(axis=1)
  return np.argsort(-strength, kind="stable")[:count]  # ties: lower state first


def _top2_choices(weights: np.ndarray, candidate: np.ndarray) -> list[tuple[int, int, int]]:
  """DARTS' parse as ``(edge, op, from_state)``: per node its two strongest edges, stronger first,
  each with its heaviest candidate operation (``candidate`` broadcasts against ``weights``)."""
  masked = np.where(candidate, weights, -np.inf)
  best_op = masked.argmax(axis=1)  # first maximum: ties go to the earlier op
  choices = []
  for _, start, end in _node_rows():
    choices += [(start + int(j), int(best_op[start + j]), int(j))
                for j in _ranked_edges(masked, start, end)]
  return choices


def _top2_cell(weights: np.ndarray, op_names: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
  """DARTS' parse of one cell: per node, the two strongest edges with their best non-none op."""
  return tuple((op_names[k], j) for _, k, j in _top2_choices(weights, _not_none(op_names)))


def darts_top2(weights, op_names=DARTS_OPS) -> Genotype:
  """DARTS' derivation rule (Liu et al., 2019, §2.4; quark0/darts ``Network.genotype``).

  For each cell, each intermediate node keeps its two strongest incoming edges, an edge's strength
  being its largest weight over the operations other than ``"none"``; each kept edge takes its
  heaviest operation other than ``"none"``. Within a node the stronger edge is listed first; every
  cell outputs the concatenation of states 2, 3, 4, 5. If ``op_names`` has no ``"none"`` (as in
  FairDARTS), all operations compete.

  Args:
    weights: ``{"normal": (14, K), "reduce": (14, K)}`` mixing weights, e.g. ``softmax(alphas)``
      (for PC-DARTS, ``softmax(alphas) * softmax(betas)`` per edge); NumPy or JAX arrays.
    op_names: the ``K`` operation names, in column order.

  Returns:
    A darts :class:`Genotype`.

  Raises:
    JaxnasError: on wrong keys or shapes, non-finite weights, or no operation other than "none".

  Example:

    >>> import numpy as np
    >>> w = np.zeros((14, 8)); w[:, 4] = 1.0  # sep_conv_3x3 everywhere, all edges equal
    >>> str(darts_top2({"normal": w, "reduce": w})).startswith(
    ...     "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0)")
    True
  """
  op_names = _check_op_names(op_names)
  if all(name == "none" for name in op_names):
    raise JaxnasError("darts-top2 needs an operation other than 'none' to choose; op_names has "
                      "only 'none'")
  rows = len(darts_edge_sources())
  arrays = _check_weights(weights, "darts", {"normal": rows, "reduce": rows}, op_names)
  concat = tuple(range(2, 2 + DARTS_NUM_NODES))
  return Genotype(normal=_top2_cell(arrays["normal"], op_names), normal_concat=concat,
                  reduce=_top2_cell(arrays["reduce"], op_names), reduce_concat=concat,
                  space="darts")


def nb201_argmax(weights, op_names=NB201_OPS) -> Genotype:
  """NAS-Bench-201's derivation: on each of the six edges, the heaviest operation, "none" included.

  Args:
    weights: ``{"cell": (6, K)}`` mixing weights, edges in :data:`NB201_EDGES` order.
    op_names: the ``K`` operation names, in column order.

  Returns:
    An nb201 :class:`Genotype`; ties go to the operation earlier in ``op_names``.

  Raises:
    JaxnasError: on wrong keys or shapes or non-finite weights.
  """
  op_names = _check_op_names(op_names)
  arrays = _check_weights(weights, "nb201", {"cell": len(NB201_EDGES)}, op_names)
  best = arrays["cell"].argmax(axis=1)
  genes = [(op_names[k], j) for k, (_, j) in zip(best, NB201_EDGES, strict=True)]
  return Genotype(normal=genes, normal_concat=(3,), space="nb201")


FAIRDARTS_THRESHOLD = 0.85
_CONCAT = tuple(range(2, 2 + DARTS_NUM_NODES))


def _check_threshold(threshold, rule: str) -> float:
  if (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.number))
      or not 0.0 <= float(threshold) <= 1.0):
    raise JaxnasError(f"{rule} threshold is {threshold!r}; it must be a number from 0 to 1 (the "
                      f"reference's is {FAIRDARTS_THRESHOLD})")
  return float(threshold)


def _darts_arrays(weights, op_names, rule: str, num_nodes: int = DARTS_NUM_NODES):
  op_names = _check_op_names(op_names)
  if all(name == "none" for name in op_names):
    raise JaxnasError(f"{rule} needs an operation other than 'none' to choose; op_names has only "
                      "'none'")
  rows = len(darts_edge_sources(num_nodes))
  return op_names, _check_weights(weights, "darts", {"normal": rows, "reduce": rows}, op_names)


def _check_num_nodes(num_nodes, rule: str) -> int:
  if isinstance(num_nodes, (bool, np.bool_)) or not isinstance(num_nodes, (int, np.integer)) \
      or num_nodes < 1:
    raise JaxnasError(f"{rule} num_nodes is {num_nodes!r}; it must be a whole number ≥ 1 (DARTS' "
                      f"cells have {DARTS_NUM_NODES})")
  return int(num_nodes)


def output_states(num_nodes: int = DARTS_NUM_NODES) -> tuple[int, ...]:
  """The states a darts cell of ``num_nodes`` intermediate nodes concatenates: its last four.

  ``range(2 + num_nodes - 4, 2 + num_nodes)`` (all intermediate states when ``num_nodes ≤ 4``),
  as the search cell (:class:`jaxnas.spaces.darts.DartsCell`, the reference's multiplier 4):
  2..5 for DARTS' four nodes, 4..7 for DARTOpti's six-node ResNet-50 cells.
  """
  return tuple(range(2 + max(0, num_nodes - 4), 2 + num_nodes))


def _fairdarts_genotype(arrays, op_names, parse_cell, rule: str, threshold: float,
                        concat=_CONCAT) -> Genotype:
  cells = {}
  for cell in ("normal", "reduce"):
    masked = np.where(_not_none(op_names), arrays[cell], -np.inf)
    cells[cell] = parse_cell(masked)
    if not cells[cell]:
      largest = float(masked.max())
      raise JaxnasError(f"{rule} kept no operation in the {cell} cell: no weight reached the "
                        f"threshold {threshold} (the largest is {largest:.4g}); lower the "
                        "threshold")
  return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"],
                  reduce_concat=concat, space="darts")


def fairdarts_sparse(weights, op_names=DARTS_OPS, *, threshold: float = FAIRDARTS_THRESHOLD,
                     num_nodes: int = DARTS_NUM_NODES) -> Genotype:
  """FairDARTS' default derivation, ``threshold_sparse`` (Chu et al., ECCV 2020, §4.3).

  For each cell and each intermediate node, take its two strongest incoming edges (strength = the
  largest weight on the edge, as DARTS) and keep each one's heaviest operation only if its weight is
  at least ``threshold`` (0.85). A node therefore has 0, 1 or 2 inputs, and the genotype is written
  in FairDARTS' ``(op, node, input)`` triples (``parse`` in ``fairdarts/utils.py`` of
  xiaomi-automl/FairDARTS); both concats are states 2..5, as the reference's ``range(2, 6)``.
  ``"none"`` never competes (FairDARTS has no ``none``; :func:`jaxnas.relax.sigmoid` gives it 0).

  Cells of any number of nodes (``num_nodes``; DARTOpti's ResNet-50 cells have 6): node ``i``
  owns the ``i + 2`` rows after those of nodes ``0 .. i − 1`` (:func:`darts_edge_sources`), and
  the concats are :func:`output_states` (the last four states, as the search cell). The
  reference's parse hard-codes four nodes; the rule itself does not depend on the count.

  Args:
    weights: ``{"normal": (E, K), "reduce": (E, K)}`` mixing weights, ``sigmoid(alphas)``;
      ``E = 14`` for four nodes, ``num_nodes (num_nodes + 3) / 2`` in general.
    op_names: the ``K`` operation names, in column order.
    threshold: the smallest weight kept, from 0 to 1. Through :func:`derive` or a recipe, bind it
      with ``functools.partial(fairdarts_sparse, threshold=...)``.
    num_nodes: intermediate nodes per cell (4).

  Returns:
    A darts :class:`Genotype` of triples; ties go to the lower state and the earlier operation.

  Raises:
    JaxnasError: on bad weights or threshold, or if a cell keeps no operation at all (the
      reference would build an empty cell).
  """
  threshold = _check_threshold(threshold, "fairdarts-sparse")
  num_nodes = _check_num_nodes(num_nodes, "fairdarts-sparse")
  op_names, arrays = _darts_arrays(weights, op_names, "fairdarts-sparse", num_nodes)

  def parse_cell(masked):
    best_op = masked.argmax(axis=1)
    genes = []
    for node, start, end in _node_rows(num_nodes):
      for j in _ranked_edges(masked, start, end):
        edge = start + int(j)
        if masked[edge, best_op[edge]] >= threshold:
          genes.append((op_names[best_op[edge]], node + 2, int(j)))
    return tuple(genes)

  return _fairdarts_genotype(arrays, op_names, parse_cell, "fairdarts-sparse", threshold,
                             output_states(num_nodes))


def fairdarts_edge(weights, op_names=DARTS_OPS, *, threshold: float = FAIRDARTS_THRESHOLD,
                   num_nodes: int = DARTS_NUM_NODES) -> Genotype:
  """FairDARTS' ``threshold_edge`` derivation (xiaomi-automl/FairDARTS, ``fairdarts/utils.py``).

  Every edge of every node is considered, and each keeps its two heaviest operations whose weight
  is at least ``threshold`` (0.85): an edge gives 0, 1 or 2 genes and a node any number of inputs,
  written as ``(op, node, input)`` triples, node by node and edge by edge. Within an edge jaxnas
  lists the heavier operation first and breaks ties towards the earlier operation; the reference
  lists the lighter first and its ascending sort breaks ties towards the later one. ``"none"``
  never competes. Any number of nodes, as :func:`fairdarts_sparse`.

  Args:
    weights: ``{"normal": (E, K), "reduce": (E, K)}`` mixing weights, ``sigmoid(alphas)``.
    op_names: the ``K`` operation names, in column order.
    threshold: the smallest weight kept, from 0 to 1 (bind with ``functools.partial``).
    num_nodes: intermediate nodes per cell (4).

  Returns:
    A darts :class:`Genotype` of triples.

  Raises:
    JaxnasError: on bad weights or threshold, or if a cell keeps no operation at all.
  """
  threshold = _check_threshold(threshold, "fairdarts-edge")
  num_nodes = _check_num_nodes(num_nodes, "fairdarts-edge")
  op_names, arrays = _darts_arrays(weights, op_names, "fairdarts-edge", num_nodes)

  def parse_cell(masked):
    genes = []
    for node, start, end in _node_rows(num_nodes):
      for j in range(end - start):
        row = masked[start + j]
        for k in np.argsort(-row, kind="stable")[:2]:
          if row[k] >= threshold:
            genes.append((op_names[k], node + 2, j))
    return tuple(genes)

  return _fairdarts_genotype(arrays, op_names, parse_cell, "fairdarts-edge", threshold,
                             output_states(num_nodes))


def darts_plus_skip_limit(weights, op_names=DARTS_OPS, *, max_skips: int = 2) -> Genotype:
  """DARTS' top-2 derivation with at most ``max_skips`` (2) skip connections in the normal cell.

  The normal cell is derived as :func:`darts_top2`; while it holds more than ``max_skips``
  ``skip_connect`` genes, the weakest of them (smallest weight; ties to the lower edge) is struck
  out, its skip weight removed from the candidates, and the cell derived again: that edge then
  takes its next-best operation, and if that leaves it weaker than another edge of its node, the
  node takes that edge instead. The reduction cell is :func:`darts_top2`'s.

  This is the rule of P-DARTS (Chen et al., ICCV 2019, §3.3, "search space regularization";
  ``check_sk_number``, ``delete_min_sk_prob``, ``keep_1_on``, ``keep_2_branches`` in
  chenxin061/pdarts ``train_search.py``, which zeroes the weakest chosen skip's probability and
  re-derives until M = 2 remain), which DARTS+ (Liang et al., 2019) discusses as the alternative to
  its own remedy, early stopping once the normal cell has two skips
  (:func:`jaxnas.stopping.darts_plus_skips`). The DARTS+ paper's full text could not be checked
  here for a derivation rule of its own. P-DARTS applies it after its last stage, to three
  operations per edge; jaxnas to every operation of the space.

  Args:
    weights: ``{"normal": (14, K), "reduce": (14, K)}`` mixing weights, e.g. ``softmax(alphas)``.
    op_names: the ``K`` operation names, in column order.
    max_skips: the most skip connections the normal cell may keep (bind with
      ``functools.partial``).

  Returns:
    A darts :class:`Genotype`.

  Raises:
    JaxnasError: on bad weights or ``max_skips``, or if the space has no operation to replace a
      skip with.
  """
  if isinstance(max_skips, (bool, np.bool_)) or not isinstance(max_skips, (int, np.integer)) \
      or max_skips < 0:
    raise JaxnasError(f"darts-plus-skip-limit max_skips is {max_skips!r}; it must be a whole "
                      "number ≥ 0")
  op_names, arrays = _darts_arrays(weights, op_names, "darts-plus-skip-limit")
  normal = arrays["normal"]
  candidate = np.broadcast_to(_not_none(op_names), normal.shape).copy()
  if "skip_connect" in op_names:
    skip = op_names.index("skip_connect")
    if not any(name not in ("none", "skip_connect") for name in op_names):
      raise JaxnasError(f"darts-plus-skip-limit needs an operation to put in place of a skip; "
                        f"op_names {list(op_names)} has only none and skip_connect")
    while True:
      skips = [(normal[e, k], e) for e, k, _ in _top2_choices(normal, candidate) if k == skip]
      if len(skips) <= max_skips:
        break
      _, weakest = min(skips)
      candidate[weakest, skip] = False
  genes = tuple((op_names[k], j) for _, k, j in _top2_choices(normal, candidate))
  return Genotype(normal=genes, normal_concat=_CONCAT,
                  reduce=_top2_cell(arrays["reduce"], op_names), reduce_concat=_CONCAT,
                  space="darts")


def pr_darts_top2(weights, op_names=DARTS_OPS) -> Genotype:
  """PR-DARTS' derivation: per node, the two heaviest (operation, edge) pairs over all its edges.

  Unlike :func:`darts_top2`, which first picks each edge's best operation and then the two
  strongest edges, every non-``none`` operation of every incoming edge competes at once, so a node
  may take two operations from the same edge (``NASNetworkPRDARTS.genotype`` in the authors' code,
  on ``softmax(alphas)``: the weights :func:`jaxnas.relax.pr_gates` gives at ``key=None``). Ties go
  to the lower state, then the earlier operation (the reference's stable sort does the same).

  Args:
    weights: ``{"normal": (14, K), "reduce": (14, K)}`` mixing weights, ``softmax(alphas)``.
    op_names: the ``K`` operation names, in column order.

  Returns:
    A darts :class:`Genotype`, the heavier pair of each node first.

  Raises:
    JaxnasError: on wrong keys or shapes, non-finite weights, or no operation other than "none".
  """
  op_names, arrays = _darts_arrays(weights, op_names, "pr-darts-top2")
  cells = {}
  for cell in ("normal", "reduce"):
    masked = np.where(_not_none(op_names), arrays[cell], -np.inf)
    genes = []
    for _, start, end in _node_rows():
      flat = masked[start:end].reshape(-1)  # (state, op) in row-major order: ties stay low
      for index in np.argsort(-flat, kind="stable")[:2]:
        j, k = divmod(int(index), len(op_names))
        genes.append((op_names[k], j))
    cells[cell] = tuple(genes)
  return Genotype(normal=cells["normal"], normal_concat=_CONCAT, reduce=cells["reduce"],
                  reduce_concat=_CONCAT, space="darts")


def pc_darts_top2(weights, op_names=DARTS_OPS) -> Genotype:
  r"""PC-DARTS' derivation: DARTS' top-2 rule on the operation weights scaled by the edge weights.

  .. math:: W_{e,k} = \mathrm{softmax}(lpha_e)_k \cdot \mathrm{softmax}_{e' 	o i}(eta)_e

  for edge :math:`e` into node :math:`i` (``genotype._parse`` in yuhuixu1993/PC-DARTS), then
  :func:`darts_top2` on :math:`W`: per node the two edges with the largest non-``none``
  :math:`W_{e,k}`, each with its heaviest non-``none`` operation. The edge weight changes which
  edges a node keeps, never which operation an edge keeps.

  Args:
    weights: ``{"normal": (14, K), "reduce": (14, K), "normal_edges": (14,), "reduce_edges":
      (14,)}``, the output of :func:`jaxnas.relax.pc_darts` (edge weights normalised per node).
    op_names: the ``K`` operation names, in column order.

  Returns:
    A darts :class:`Genotype`.

  Raises:
    JaxnasError: on wrong keys or shapes or non-finite weights.
  """
  expected = ("normal", "reduce", "normal_edges", "reduce_edges")
  if not isinstance(weights, Mapping) or set(weights) != set(expected):
    got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
    raise JaxnasError(f"pc-darts-top2 needs weights with keys {list(expected)} (a darts space "
                      f"built with edge_normalization), got {got}")
  rows = len(darts_edge_sources())
  scaled, problems = {}, []
  for cell in ("normal", "reduce"):
    edges = np.asarray(weights[f"{cell}_edges"])
    if edges.shape != (rows,):
      problems.append(f"weights['{cell}_edges'] has shape {edges.shape} but pc-darts-top2 expects "
                      f"({rows},)")
    elif not np.all(np.isfinite(edges)):
      problems.append(f"weights['{cell}_edges'] holds NaN or infinite values")
    else:
      ops = np.asarray(weights[cell])
      # a wrong α shape is left for darts_top2 to report
      scaled[cell] = ops * edges.astype(np.float64)[:, None] if ops.ndim == 2 and \
          ops.shape[0] == rows else ops
  if problems:
    raise JaxnasError("; ".join(problems))
  return darts_top2(scaled, op_names)


def _ddarts_sparse(weights, op_names=DARTS_OPS, *, threshold: float = FAIRDARTS_THRESHOLD):
  """D-DARTS: :func:`fairdarts_sparse` on every cell of ``{"cells": (L, 14, K)}``
  (:func:`jaxnas.ddarts.derive_cells`); a per-cell genotype."""
  from jaxnas import ddarts  # noqa: PLC0415  (ddarts imports this module)
  return ddarts.derive_cells(weights, op_names, rule="sparse", threshold=threshold)


def _ddarts_edge(weights, op_names=DARTS_OPS, *, threshold: float = FAIRDARTS_THRESHOLD):
  """D-DARTS: :func:`fairdarts_edge` on every cell (:func:`jaxnas.ddarts.derive_cells`)."""
  from jaxnas import ddarts  # noqa: PLC0415
  return ddarts.derive_cells(weights, op_names, rule="edge", threshold=threshold)


Rule = Callable[..., Genotype]

RULES: dict[str, Rule] = {
    "darts-top2": darts_top2,
    "nb201-argmax": nb201_argmax,
    "fairdarts-sparse": fairdarts_sparse,
    "fairdarts-edge": fairdarts_edge,
    "darts-plus-skip-limit": darts_plus_skip_limit,
    "pr-darts-top2": pr_darts_top2,
    "pc-darts-top2": pc_darts_top2,
    "ddarts-sparse": _ddarts_sparse,
    "ddarts-edge": _ddarts_edge,
}


def derive(rule: str, weights, op_names=None) -> Genotype:
  """Applies the derivation rule called ``rule`` to mixing weights.

  Args:
    rule: a key of :data:`RULES`.
    weights: the mixing weights, laid out as the rule's space expects.
    op_names: the operation names in column order; ``None`` means the rule's space's default.

  Returns:
    The :class:`Genotype`.

  Raises:
    JaxnasError: if ``rule`` is unknown or the weights do not fit it.
  """
  if rule not in RULES:
    raise unknown_name("derivation rule", rule, RULES)
  if op_names is None:
    return RULES[rule](weights)
  return RULES[rule](weights, op_names)
