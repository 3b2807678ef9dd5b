"""D-DARTS: one set of alphas per cell, the ablation loss, and Algorithm 1 (deeper networks).

Heuillet, Tabia, Arioui, Youcef-Toumi. D-DARTS: Distributed Differentiable Architecture Search.
Pattern Recognition Letters 2023 (arXiv:2108.09306); the authors' code is aheuillet/D-DARTS
(REFERENCE §12).

The pieces:

- **Individual cells.** The DARTS space with ``cell_sharing="none"``
  (:class:`jaxnas.spaces.DartsSearchNetwork`) takes ``alphas = {"cells": (L, 14, 8)}``, row ``i``
  for cell ``i``, mixed by FairDARTS' sigmoid without ``none`` (:func:`jaxnas.relax.sigmoid`).
  The reference gives every cell its own Adam and its own cosine schedule. jaxnas uses one optax
  Adam over the stacked array, which is the same thing: Adam's moments, its L2 term and its update
  are elementwise, so the slice ``[i]`` of the optimiser state *is* cell ``i``'s state and cell
  ``i``'s update reads nothing of the other cells; the step count (bias correction) and the
  learning rate at a step are the same for every cell in the reference too, since all cells step
  together with identical schedules. Only a global-norm clip would couple the cells, and the
  D-DARTS recipe has none.
- **Per-cell zero-one loss** (:func:`zero_one_per_cell`): FairDARTS' L01 taken per cell and summed,
  so that each cell's alphas see ``w01`` times the gradient of their own cell's mean, as each
  cell's own criterion in the reference.
- **Marginal contributions and the ablation loss** (:func:`marginal_contributions`,
  :func:`ablation_terms`, :func:`ablation_loss`): ``M_i = L_CE(C) − L_CE(C \\ {C_i})`` for every
  cell, all ``n + 1`` configurations in one vmapped forward pass.
- **Per-cell derivation** (:func:`derive_cells`): FairDARTS' threshold rules (sparse, edge; 0.85)
  on every cell, giving a :class:`CellGenotype` with one cell per index.
- **Algorithm 1** (:func:`algorithm1_indices`, :func:`deepen`): an ``n``-cell network from the
  ``|C|`` searched cells.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas import derive, relax
from jaxnas.errors import JaxnasError, unknown_name

__all__ = ["DEACTIVATIONS", "DEFAULT_DEACTIVATION", "ABLATED_POSITIONS", "CellGenotype", "zero_one_per_cell",
           "deactivated_mixing", "marginal_contributions", "ablation_terms", "ablation_gradient",
           "ablation_loss", "ABLATION_REGULARIZERS", "derive_cells", "reduction_cells",
           "algorithm1_indices", "code_indices", "deepen", "nodes_of_edges", "place_cells",
           "network_genotype"]

DEACTIVATIONS = ("random", "zero", "identity")
# Which positions of a distinct cell an ablation switches off (only differs with init_genotype).
ABLATED_POSITIONS = ("all", "first")
# The authors' choice, and the only one that is defined for every cell (see deactivated_mixing).
DEFAULT_DEACTIVATION = "random"
_CELLS = "cells"


def _cells_leaf(tree, who: str):
  if not isinstance(tree, Mapping) or _CELLS not in tree:
    got = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise JaxnasError(f"{who} needs per-cell alphas {{'cells': (L, 14, K)}} (the darts space with "
                      f"cell_sharing='none', e.g. --method d-darts); got keys {got}")
  leaf = tree[_CELLS]
  if jnp.ndim(leaf) != 3:
    raise JaxnasError(f"{who}: alphas['cells'] has shape {tuple(jnp.shape(leaf))}; expected "
                      "(cells, edges, ops)")
  return leaf


# --- the per-cell zero-one loss -------------------------------------------------------------------


def zero_one_per_cell(alphas, *, op_names=None, exclude=None) -> jax.Array:
  r"""FairDARTS' zero-one loss per cell, summed over the cells (D-DARTS, §3.2).

  .. math:: \mathcal L_{01} = -\sum_{c} \frac{1}{N_c} \sum_{e,k}
     \big(\sigma(\alpha_{c,e,k}) - \tfrac12\big)^2

  In the authors' code every cell's criterion is ``CE − w01·MSE(σ(α_c), 0.5)``
  (``separate_loss.py:ConvAblationLoss``), the MSE a mean over that cell's 14 × 7 entries, and
  each cell's optimiser steps on its own criterion, so cell ``c`` sees ``w01`` times the gradient
  of its own mean. The sum above gives every cell exactly that gradient, whatever the number of
  cells (:func:`jaxnas.regularize.zero_one`, a mean over all entries, would divide it by L).
  A 3-D leaf ``(L, E, K)`` holds L cells; a 2-D leaf is one cell. ``none`` is left out as in
  :func:`jaxnas.regularize.zero_one`.

  Args:
    alphas: pytree of logits, operations on the last axis.
    op_names: the operation names in column order; without it every column counts.
    exclude: operations left out; None means ``("none",)`` where the space has it.

  Returns:
    The scalar :math:`\mathcal L_{01}` (between −L/4 and 0).
  """
  leaves = jax.tree.leaves(alphas)
  if not leaves:
    raise JaxnasError("zero_one_per_cell needs at least one alphas array, got an empty pytree")
  mask = relax.excluded_mask(op_names, exclude, default=("none",), who="zero_one_per_cell")
  total = []
  for a in leaves:
    if op_names is not None and len(tuple(op_names)) != a.shape[-1]:
      raise JaxnasError(f"zero_one_per_cell: alphas have {a.shape[-1]} operation columns but "
                        f"op_names lists {len(tuple(op_names))} ({list(op_names)})")
    sq = jnp.square(jax.nn.sigmoid(a) - 0.5)
    if mask is not None:
      sq = sq[..., ~mask]
    cells = sq.reshape((-1,) + sq.shape[-2:]) if sq.ndim >= 3 else sq[None]
    total.append(jnp.sum(jnp.mean(cells, axis=(1, 2))))
  return -sum(total[1:], total[0])


# --- marginal contributions -----------------------------------------------------------------------


def _check_mode(deactivate: str, positions: str = "all") -> None:
  if deactivate not in DEACTIVATIONS:
    raise unknown_name("cell deactivation", deactivate, DEACTIVATIONS)
  if positions not in ABLATED_POSITIONS:
    raise unknown_name("ablated positions", positions, ABLATED_POSITIONS)


def deactivated_mixing(mixing, key, *, deactivate: str = DEFAULT_DEACTIVATION,
                       positions: str = "all"):
  r"""The ``n + 1`` configurations of D-DARTS' ablation as one stack of mixing weights.

  Configuration 0 is the whole network ``C``; configuration ``i + 1`` is ``C \ {C_i}``, cell
  ``i`` "deactivated". Returns ``{"cells": (n + 1, n, E, K)}`` (plus ``"gates": (n + 1, n)`` for
  ``"identity"``), ready to be vmapped over.

  How a cell is deactivated:

  - ``"random"`` (default): every mixing weight of the cell becomes an independent draw from
    U[0, 1), as the authors' code (``MixedOp.forward`` with ``cell_active=False`` multiplies each
    op by ``random()``). It is the default because it is the reference's and because it is the
    only option defined for every cell: it keeps the cell's shape and, on average, the scale of
    the σ(α) = 1/2 weights the search starts from, so ``M_i`` measures what cell ``i``'s learned
    alphas add over a random architecture at the same network weights.
  - ``"zero"``: all the cell's mixing weights are 0, so the cell outputs exactly 0 (every node is
    a weighted sum of ops). Downstream cells then lose that input altogether; ``M_i`` mostly
    measures the cell's position.
  - ``"identity"``: the cell's output is replaced by its input :math:`s_1`
    (``gates[i] = 0``; see :class:`jaxnas.spaces.DartsSearchNetwork`). Where the shapes differ
    (the first cell, reduction cells) no identity exists and the cell outputs 0, as ``"zero"``.

  With ``positions="all"`` (default) configuration ``i + 1`` does not depend on cell ``i``'s
  alphas, which :func:`ablation_gradient`'s two-product formula relies on.

  Which positions (DARTOpti, ``init_genotype``: row ``i`` is a *distinct* cell that several
  positions of the network share):

  - ``"all"`` (default): row ``i`` is switched off at every position that uses it, so ``M_i`` is
    what the distinct cell contributes to the whole network. A departure from the authors' code,
    chosen because the alphas being judged are those of every position.
  - ``"first"``: only the first position that uses row ``i`` is switched off, as the authors'
    code (a repeated cell reads the ``cell_dict`` entry of its first occurrence, and
    ``compute_marginal_contributions`` deactivates that first module only); the other positions
    keep the learned row. The stack then carries the deactivated rows as ``"first_cells"`` (or the
    gates as ``"first_gates"``) next to the untouched ``"cells"``; the darts supernet reads them
    at each row's first position only. Without ``init_genotype`` every position is the first of
    its row, and both readings are the same function.

  Args:
    mixing: ``{"cells": (n, E, K)}`` mixing weights.
    key: PRNG key for ``"random"`` (unused otherwise).
    deactivate: ``"random"``, ``"zero"`` or ``"identity"``.
    positions: ``"all"`` or ``"first"``.

  Returns:
    The stacked mixing weights.
  """
  _check_mode(deactivate, positions)
  w = _cells_leaf(mixing, "deactivated_mixing")
  n = w.shape[0]
  off = jnp.concatenate([jnp.zeros((1, n), bool), jnp.eye(n, dtype=bool)])  # (n + 1, n)
  stack = jnp.broadcast_to(w, (n + 1,) + w.shape)
  if positions == "first":
    out = deactivated_mixing(mixing, key, deactivate=deactivate)
    if deactivate == "identity":
      return {_CELLS: stack, "first_gates": out["gates"]}
    return {_CELLS: stack, "first_cells": out[_CELLS]}
  if deactivate == "random":
    if key is None:
      raise JaxnasError("deactivated_mixing with deactivate='random' needs a PRNG key")
    noise = jax.random.uniform(key, stack.shape, w.dtype)
    return {_CELLS: jnp.where(off[:, :, None, None], noise, stack)}
  if deactivate == "zero":
    return {_CELLS: jnp.where(off[:, :, None, None], jnp.zeros((), w.dtype), stack)}
  return {_CELLS: stack, "gates": jnp.where(off, jnp.zeros((), w.dtype), jnp.ones((), w.dtype))}


def marginal_contributions(mixing_loss: Callable, w, mixing, batch, key, *,
                           deactivate: str = DEFAULT_DEACTIVATION, positions: str = "all"):
  r"""Every cell's marginal contribution in one vmapped pass (D-DARTS, §3.3, eq. 4).

  .. math:: M_i = \mathcal L_{CE}(C) - \mathcal L_{CE}(C \setminus \{C_i\}), \quad i = 1..n

  The ``n + 1`` losses are one ``jax.vmap`` of ``mixing_loss`` over :func:`deactivated_mixing`'s
  stack, on the same batch and network weights (``Architect.compute_marginal_contributions`` in
  the authors' code runs ``n + 1`` forwards, on the val batch, in the network's current mode).
  The batch statistics each configuration would write are discarded: the reference's extra
  forwards also update the running statistics ``n + 1`` times per step, which jaxnas does not copy
  (they are not used in train mode, and an ablation should not change the network).

  Args:
    mixing_loss: ``loss(w, mixing, batch, key) -> (scalar, aux)``
      (:func:`jaxnas.search.make_mixing_loss`).
    w: network weights.
    mixing: ``{"cells": (n, E, K)}`` mixing weights of the whole network.
    batch: the batch (the val batch, as the reference).
    key: PRNG key: ``fold_in(key, 1)`` draws the random weights, ``key`` goes to the loss.
    deactivate, positions: see :func:`deactivated_mixing`.

  Returns:
    ``(M, losses)``: shape ``(n,)`` and ``(n + 1,)``, ``losses[0] = L_CE(C)``.
  """
  k_random = None if key is None else jax.random.fold_in(key, 1)
  stack = deactivated_mixing(mixing, k_random, deactivate=deactivate, positions=positions)
  losses = jax.vmap(lambda m: mixing_loss(w, m, batch, key)[0])(stack)
  return losses[0] - losses[1:], losses


def ablation_terms(contributions) -> jax.Array:
  r"""D-DARTS' ablation loss of every cell (§3.3, eq. 5).

  .. math:: \mathcal L_{AB}^i = -\frac{M_i - \bar M}{\bar M}, \qquad
     \bar M = \frac1n \sum_j M_j, \qquad \mathcal L_{AB}^i = 0 \text{ when } \bar M = 0

  as ``ConvAblationLoss.compute_ablation_loss`` (whose guard against :math:`\bar M = 0` jaxnas
  keeps). Note :math:`\sum_i \mathcal L_{AB}^i = 0` always: the terms only mean something per
  cell, each added to its own cell's objective.
  """
  m = jnp.mean(contributions)
  safe = jnp.where(m == 0, jnp.ones_like(m), m)
  return jnp.where(m == 0, jnp.zeros_like(contributions), -(contributions - m) / safe)


def ablation_gradient(mixing_loss: Callable, relaxation: Callable, w, alphas, batch, key, *,
                      deactivate: str = DEFAULT_DEACTIVATION, positions: str = "all"):
  r"""Each cell's ablation loss and its gradient in that cell's own alphas.

  In D-DARTS every cell minimises its own objective, so cell ``c``'s alphas get
  :math:`\nabla_{\alpha_c} \mathcal L_{AB}^c` (not the gradient of a sum, which is identically 0).
  With :math:`\mathcal L_0 = \mathcal L_{CE}(C)`, :math:`\mathcal L_j = \mathcal L_{CE}(C
  \setminus \{C_j\})` and :math:`M_j = \mathcal L_0 - \mathcal L_j`:

  .. math:: \nabla_{\alpha_c} \mathcal L_{AB}^c
     = -\frac{\nabla_{\alpha_c} M_c}{\bar M} + \frac{M_c\, \nabla_{\alpha_c} \bar M}{\bar M^2}
     = G_c \Big(\frac{M_c}{\bar M^2} - \frac1{\bar M}\Big) - S_c \frac{M_c}{\bar M^2}

  where :math:`G = \nabla_\alpha \mathcal L_0`, :math:`S = \nabla_\alpha \frac1n \sum_j
  \mathcal L_j`, and :math:`\nabla_{\alpha_c} M_c = G_c` because configuration ``c`` does not
  depend on :math:`\alpha_c` (:func:`deactivated_mixing`). So two vector-Jacobian products of the
  one vmapped pass give every cell's gradient (a Jacobian's ``n`` diagonal blocks would need ``n``);
  zero where :math:`\bar M = 0`.

  With ``positions="first"`` configuration ``c`` still reads :math:`\alpha_c` at the distinct
  cell's other positions, so :math:`\nabla_{\alpha_c} M_c = G_c - H_{c,c}` with
  :math:`H_c = \nabla_\alpha \mathcal L_c`: ``n + 2`` products (rows ``e_0, e_1 .. e_n`` and
  the mean) give every :math:`H_{c,c}`, and

  .. math:: \nabla_{\alpha_c} \mathcal L_{AB}^c
     = -\frac{G_c - H_{c,c}}{\bar M} + \frac{M_c (G_c - S_c)}{\bar M^2}.

  Args:
    mixing_loss: ``loss(w, mixing, batch, key) -> (scalar, aux)``.
    relaxation: ``fn(alphas, key) -> mixing`` (the recipe's, e.g. sigmoid without none).
    w: network weights.
    alphas: ``{"cells": (n, E, K)}``.
    batch, key, deactivate, positions: as :func:`marginal_contributions` (``key`` also goes to
      ``relaxation``).

  Returns:
    ``(terms, M, grad)``: :math:`\mathcal L_{AB}` ``(n,)``, ``M`` ``(n,)`` and the gradient, a
    pytree like ``alphas``.
  """
  _cells_leaf(alphas, "ablation_gradient")

  def losses_of(a):
    return marginal_contributions(mixing_loss, w, relaxation(a, key), batch, key,
                                  deactivate=deactivate, positions=positions)[1]

  losses, vjp = jax.vjp(losses_of, alphas)
  n = losses.shape[0] - 1
  if positions == "first":  # rows e_0, e_1 .. e_n, then the mean of e_1 .. e_n
    cot = jnp.concatenate([jnp.eye(n + 1, dtype=losses.dtype),
                           jnp.zeros((1, n + 1), losses.dtype).at[0, 1:].set(1.0 / n)])
  else:
    cot = jnp.zeros((2, n + 1), losses.dtype).at[0, 0].set(1.0).at[1, 1:].set(1.0 / n)
  (grads,) = jax.vmap(vjp)(cot)
  contributions = losses[0] - losses[1:]
  m = jnp.mean(contributions)
  safe = jnp.where(m == 0, jnp.ones_like(m), m)
  coef_g = jnp.where(m == 0, 0.0, contributions / safe ** 2 - 1.0 / safe)
  coef_s = jnp.where(m == 0, 0.0, -contributions / safe ** 2)
  coef_h = jnp.where(m == 0, 0.0, 1.0 / safe) * jnp.ones_like(contributions)

  def combine(g):
    shape = (n,) + (1,) * (g.ndim - 2)
    c = lambda coef: coef.reshape(shape).astype(g.dtype)
    if positions == "first":  # g[0] = G, g[1 + c][c] = H_cc, g[-1] = S
      own = g[1 + jnp.arange(n), jnp.arange(n)]
      return c(coef_g) * g[0] + c(coef_s) * g[-1] + c(coef_h) * own
    return c(coef_g) * g[0] + c(coef_s) * g[1]

  grad = {k: combine(v) if k == _CELLS else jnp.zeros_like(v[0]) for k, v in grads.items()}
  return ablation_terms(contributions), contributions, grad


def ablation_loss(train_loss, val_loss, w, alphas, train_batch, val_batch, key, *,
                  mixing_loss=None, relaxation=None, deactivate: str = DEFAULT_DEACTIVATION,
                  differentiable: bool = False, positions: str = "all") -> jax.Array:
  r"""D-DARTS' ablation loss as a loss-based regulariser of the search step.

  The search adds :math:`w_{AB}` times this term's gradient to the architecture gradient
  (:func:`jaxnas.search.make_search_step`; the step binds ``mixing_loss`` and ``relaxation``).
  Computed on the val batch, as the reference.

  - ``differentiable=False`` (``ddarts-ablation``, the authors' code): the reference builds
    :math:`\mathcal L_{AB}^c` with ``torch.tensor(float)``, a constant, and adds it to each cell's
    loss: its gradient is zero, so it changes nothing in the search; only the reported loss moves
    (REFERENCE §12). jaxnas does the same: gradient 0, the term computed and logged.
  - ``differentiable=True`` (``ddarts-ablation-grad``): each cell's alphas get
    :math:`\nabla_{\alpha_c} \mathcal L_{AB}^c` (:func:`ablation_gradient`), what the paper's
    loss would do if it were differentiated.

  ``positions`` (``"all"``, or ``"first"`` for the ``-first`` names, the authors' reading) says
  which positions of a DARTOpti distinct cell are switched off (:func:`deactivated_mixing`).

  The returned scalar's value is :math:`\frac1n \sum_c |\mathcal L_{AB}^c|` (the logged
  ``reg/<name>``; the plain sum is identically 0) and its gradient in ``alphas`` is the per-cell
  gradient above (0 for the constant version), by the stop-gradient identity
  :math:`v + \langle \mathrm{sg}(g), \alpha - \mathrm{sg}(\alpha)\rangle`.

  Raises:
    JaxnasError: without per-cell alphas, or when called outside a search step (no
      ``mixing_loss``/``relaxation``).
  """
  del train_loss, val_loss, train_batch
  if mixing_loss is None or relaxation is None:
    raise JaxnasError("the D-DARTS ablation loss needs the search step's mixing_loss and "
                      "relaxation; use it as a recipe regulariser")
  fixed = jax.lax.stop_gradient(alphas)
  if differentiable:
    terms, _, grad = ablation_gradient(mixing_loss, relaxation, w, fixed, val_batch, key,
                                       deactivate=deactivate, positions=positions)
  else:
    contributions, _ = marginal_contributions(mixing_loss, w, relaxation(fixed, key), val_batch,
                                              key, deactivate=deactivate, positions=positions)
    terms, grad = ablation_terms(contributions), jax.tree.map(jnp.zeros_like, fixed)
  value = jax.lax.stop_gradient(jnp.mean(jnp.abs(terms)))
  linear = sum(jnp.sum(jax.lax.stop_gradient(g) * (a - jax.lax.stop_gradient(a)))
               for g, a in zip(jax.tree.leaves(grad), jax.tree.leaves(alphas)))
  return value + linear.astype(value.dtype)


def _ablation_variant(deactivate: str, differentiable: bool, positions: str = "all"):
  def fn(train_loss, val_loss, w, alphas, train_batch, val_batch, key, *, mixing_loss=None,
         relaxation=None):
    return ablation_loss(train_loss, val_loss, w, alphas, train_batch, val_batch, key,
                         mixing_loss=mixing_loss, relaxation=relaxation, deactivate=deactivate,
                         differentiable=differentiable, positions=positions)
  kind = "differentiable" if differentiable else "constant, as the authors' code"
  fn.__doc__ = (f"D-DARTS' ablation loss, deactivation {deactivate!r}, {kind}, positions "
                f"{positions!r}; see :func:`ablation_loss`.")
  return fn


# Loss-based regularisers, registered in jaxnas.regularize.LOSS_REGULARIZERS. The "-first" names
# switch off only a distinct cell's first position (the authors' reading; see deactivated_mixing).
ABLATION_REGULARIZERS = {
    "ddarts-ablation" + ("-grad" if grad else "") + ("" if mode == "random" else f"-{mode}")
    + ("" if where == "all" else f"-{where}"): _ablation_variant(mode, grad, where)
    for where in ABLATED_POSITIONS for grad in (False, True) for mode in DEACTIVATIONS
}


# --- per-cell genotypes ---------------------------------------------------------------------------


def reduction_cells(num_cells: int) -> tuple[int, ...]:
  """The reduction cells of an ``num_cells``-cell network: ``n // 3`` and ``2n // 3``."""
  return tuple(sorted({num_cells // 3, 2 * num_cells // 3}))


class _CellGenotypeFields(NamedTuple):
  cells: tuple
  concat: tuple
  reductions: tuple
  space: str = "darts-cells"


class CellGenotype(_CellGenotypeFields):
  """A network with one cell genotype per index (D-DARTS' ``Genotype_nested``).

  Attributes:
    cells: one tuple of FairDARTS ``(op, node, input)`` triples per cell, in network order.
    concat: the states concatenated into each cell's output (2..5 for four nodes).
    reductions: indices of the reduction cells.
    space: ``"darts-cells"``.

  Frozen, hashable and JSON-serialisable like :class:`jaxnas.derive.Genotype`; ``str()`` is the
  reference's notation, ``Genotype_nested(genes=[...], concat=[...], reductions=[...])``.

  Raises:
    JaxnasError: for malformed genes or reduction indices outside the network.
  """

  __slots__ = ()

  def __new__(cls, cells, concat=(2, 3, 4, 5), reductions=None, space="darts-cells"):
    if space != "darts-cells":
      raise JaxnasError(f"a CellGenotype's space is 'darts-cells', got {space!r}")
    if not isinstance(cells, (list, tuple)) or not cells:
      raise JaxnasError("a CellGenotype needs a non-empty list of cells, one list of "
                        "(op, node, input) triples each")
    genes = tuple(derive._genes(cell, f"cells[{i}]") for i, cell in enumerate(cells))
    concat = derive._states(concat, "concat")
    for i, cell in enumerate(genes):
      if not cell or any(len(g) != 3 for g in cell):
        raise JaxnasError(f"CellGenotype cells[{i}] must be a non-empty list of (op, node, "
                          "input) triples")
      derive._check_darts_triples(cell, concat, f"cells[{i}]")
    reductions = reduction_cells(len(genes)) if reductions is None else tuple(
        derive._int(r, "a reduction index") for r in reductions)
    bad = [r for r in reductions if not 0 <= r < len(genes)]
    if bad:
      raise JaxnasError(f"CellGenotype reductions {list(reductions)} name cells {bad} outside "
                        f"0..{len(genes) - 1}")
    return super().__new__(cls, genes, concat, tuple(sorted(set(reductions))), space)

  def __str__(self) -> str:
    return (f"Genotype_nested(genes={[list(c) for c in self.cells]!r}, "
            f"concat={list(self.concat)!r}, reductions={list(self.reductions)!r})")

  def to_dict(self) -> dict:
    return {"space": self.space, "cells": [[list(g) for g in c] for c in self.cells],
            "concat": list(self.concat), "reductions": list(self.reductions)}

  @classmethod
  def from_dict(cls, fields: Mapping) -> "CellGenotype":
    if not isinstance(fields, Mapping) or "cells" not in fields:
      raise JaxnasError("a per-cell genotype is a JSON object with 'cells', 'concat' and "
                        "'reductions'")
    unknown = sorted(set(fields) - set(_CellGenotypeFields._fields))
    if unknown:
      raise JaxnasError(f"per-cell genotype has unknown fields {unknown}; its fields are "
                        f"{list(_CellGenotypeFields._fields)}")
    return cls(**fields)

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes :meth:`to_json` to ``path`` (a directory means its ``genotype.json``)."""
    path = derive._genotype_path(path)
    path.write_text(self.to_json() + "\n")
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "CellGenotype":
    path = derive._genotype_path(path)
    if not path.is_file():
      raise JaxnasError(f"no genotype file at {path}; pass a genotype.json or a run directory")
    try:
      return cls.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
      raise JaxnasError(f"{path} is not valid JSON ({err})") from None


def derive_cells(weights, op_names=derive.DARTS_OPS, *, rule: str = "sparse",
                 threshold: float = derive.FAIRDARTS_THRESHOLD) -> CellGenotype:
  """D-DARTS' derivation: FairDARTS' threshold rule on every cell (``parse_genotype``).

  Cell ``i`` of ``weights["cells"]`` (``sigmoid(alphas)``) is parsed by
  :func:`jaxnas.derive.fairdarts_sparse` (``rule="sparse"``, the reference's default
  ``threshold_sparse``: per node the two strongest edges, each kept if its best op reaches the
  threshold) or :func:`jaxnas.derive.fairdarts_edge` (``rule="edge"``). The reduction cells are
  ``L // 3`` and ``2L // 3``, as the search network's.

  Cells of any node count: the count ``s`` is read off the ``E`` rows of a cell,
  ``E = Σ_{i<s} (i + 2) = s (s + 3) / 2`` (14 rows: 4 nodes; 27 rows: 6, DARTOpti's ResNet-50), so
  ``s = (−3 + √(9 + 8E)) / 2``; the concat is the last four states
  (:func:`jaxnas.derive.output_states`, as the search cell). A DARTOpti search's rows are its
  *distinct* cells; :func:`place_cells` lays them out over the network's positions.

  Raises:
    JaxnasError: for bad weights or threshold, a row count that is no cell's, or a cell in which
      no weight reaches the threshold (the reference would build an empty cell).
  """
  parsers = {"sparse": derive.fairdarts_sparse, "edge": derive.fairdarts_edge}
  if rule not in parsers:
    raise unknown_name("per-cell derivation rule", rule, parsers)
  if not isinstance(weights, Mapping) or set(weights) != {_CELLS}:
    got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
    raise JaxnasError(f"ddarts-{rule} derives per-cell weights {{'cells': (L, 14, K)}}, got keys "
                      f"{got}; use a search with --cell-sharing none (e.g. --method d-darts)")
  cells = np.asarray(weights[_CELLS])
  if cells.ndim != 3:
    raise JaxnasError(f"weights['cells'] has shape {cells.shape}; expected (cells, 14, ops)")
  steps = nodes_of_edges(cells.shape[1])
  genes = []
  for i, w in enumerate(cells):
    try:
      genes.append(parsers[rule]({"normal": w, "reduce": w}, op_names, threshold=threshold,
                                 num_nodes=steps).normal)
    except JaxnasError as e:
      raise JaxnasError(f"cell {i}: {e}") from None
  return CellGenotype(genes, derive.output_states(steps), reduction_cells(len(genes)))


def nodes_of_edges(num_edges: int) -> int:
  """Intermediate nodes ``s`` of a darts cell with ``num_edges`` edges: ``s (s + 3) / 2 = E``.

  >>> nodes_of_edges(14), nodes_of_edges(27), nodes_of_edges(2)
  (4, 6, 1)

  Raises:
    JaxnasError: if no whole ``s`` has that many edges.
  """
  s = int(round((-3 + np.sqrt(9 + 8 * int(num_edges))) / 2))
  if s < 1 or s * (s + 3) // 2 != num_edges:
    raise JaxnasError(f"a cell's alphas have {num_edges} edge rows, which no darts cell has (s "
                      "nodes have s(s + 3)/2 edges: 2, 5, 9, 14, 20, 27, ...)")
  return s


def place_cells(genotype: CellGenotype, seq, reductions) -> CellGenotype:
  """The whole network's genotype from the genotypes of its distinct cells (DARTOpti).

  Position ``i`` takes distinct cell ``seq[i]``'s genes, so identical cells share the derived
  cell as they shared its alphas; ``reductions`` are the network's (e.g. ResNet-18's 1, 2, 3),
  not ``L // 3`` and ``2L // 3``. This is the authors' ``Genotype_opt`` (``genes``, ``seq``,
  ``reductions``) written out position by position, the form :class:`CellGenotype` and
  ``jaxnas derive --cells N`` read.

  Raises:
    JaxnasError: if ``seq`` names a cell the genotype lacks.
  """
  seq = tuple(int(c) for c in seq)
  bad = [c for c in seq if not 0 <= c < len(genotype.cells)]
  if bad:
    raise JaxnasError(f"the network's cell sequence {list(seq)} names cells {bad}, but the "
                      f"genotype has {len(genotype.cells)}")
  return CellGenotype(tuple(genotype.cells[c] for c in seq), genotype.concat, tuple(reductions))


def network_genotype(model, genotype):
  """``genotype`` over every position of ``model`` (a darts supernet), as the run writes it.

  A search with ``init_genotype`` (DARTOpti) has one alpha row per distinct cell; its per-cell
  genotype is laid out by :func:`place_cells` with the hand-made network's ``seq`` and
  reductions. Any other genotype is returned as it is.
  """
  name = getattr(model, "init_genotype", "")
  if not name or not isinstance(genotype, CellGenotype):
    return genotype
  from jaxnas.spaces import dartopti_ops  # noqa: PLC0415
  net = dartopti_ops.handmade(name)
  return place_cells(genotype, net.seq, net.reductions)


# --- Algorithm 1 ----------------------------------------------------------------------------------


def _check_counts(num_searched, n):
  for value, what in ((num_searched, "the number of searched cells |C|"),
                      (n, "the number of cells n")):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise JaxnasError(f"{what} must be a whole number ≥ 1, got {value!r}")


def algorithm1_indices(num_searched: int, n: int) -> tuple[int, ...]:
  r"""Which searched cell each of the ``n`` cells of a deeper network takes (D-DARTS, Alg. 1).

  As the paper states it, with :math:`m = \lfloor |C|/3 \rfloor`, :math:`m_2 = \lfloor 2|C|/3
  \rfloor` (the searched network's reduction cells) and, if :math:`n > |C|`, for
  :math:`i = 0..n-1`:

  .. math::
     c_i = \begin{cases}
       i \bmod m & i < \lfloor n/3 \rfloor \\
       m & i = \lfloor n/3 \rfloor \\
       (i \bmod (m_2 - 1 - m)) + m + 1 & \lfloor n/3 \rfloor < i < \lfloor 2n/3 \rfloor \\
       m_2 & i = \lfloor 2n/3 \rfloor \\
       (i \bmod (|C| - 1 - m_2)) + m_2 + 1 & i > \lfloor 2n/3 \rfloor
     \end{cases}

  and :math:`c_i = i` if :math:`n \le |C|`. So each stage cycles through the searched cells of
  the same stage, the two reduction cells land on the deeper network's reductions
  (:math:`\lfloor n/3 \rfloor`, :math:`\lfloor 2n/3 \rfloor`), and the cycle is indexed by the
  absolute ``i`` (the middle stage of (8, 14) starts at cell 4, not 3). Worked by hand:
  (|C|, n) = (8, 14) gives 0 1 0 1 | 2 | 4 3 4 3 | 5 | 6 7 6 7.

  The formula has a modulus of zero when a stage holds no normal cell: :math:`m = 0`
  (|C| < 3) or :math:`m_2 - 1 - m = 0` or :math:`|C| - 1 - m_2 = 0` (|C| = 3 or 4). jaxnas
  refuses those with a one-line error rather than invent a fallback.

  Raises:
    JaxnasError: for ``n < 1`` or ``|C| < 1``, or an undefined case (above).
  """
  _check_counts(num_searched, n)
  if n <= num_searched:
    return tuple(range(n))
  m, m2 = num_searched // 3, 2 * num_searched // 3
  moduli = (m, m2 - 1 - m, num_searched - 1 - m2)
  if min(moduli) <= 0:
    raise JaxnasError(f"Algorithm 1 is undefined for {num_searched} searched cells and n = {n} > "
                      f"{num_searched}: a stage has no normal cell to repeat (modulus "
                      f"{min(moduli)}); search with 5 or more cells, or derive n ≤ {num_searched}")
  out = []
  for i in range(n):
    if i < n // 3:
      c = i % m
    elif i == n // 3:
      c = m
    elif i < 2 * n // 3:
      c = i % (m2 - 1 - m) + m + 1
    elif i == 2 * n // 3:
      c = m2
    else:
      c = i % (num_searched - 1 - m2) + m2 + 1
    out.append(c)
  return tuple(out)


def code_indices(num_searched: int, n: int) -> tuple[int, ...]:
  r"""The authors' code's version of Algorithm 1 (``model.py:NetworkCIFAR.__init__``), for reference.

  Identical to :func:`algorithm1_indices` except in the first stage, where the code writes
  ``i % len(genes)//3``, which Python reads as :math:`\lfloor (i \bmod |C|) / 3 \rfloor` (``%``
  and ``//`` bind equally, left to right) instead of :math:`i \bmod \lfloor |C|/3 \rfloor`.
  Worked example, (|C|, n) = (8, 14): the paper gives 0 1 0 1 for cells 0-3, the code
  :math:`\lfloor 0/3 \rfloor, \lfloor 1/3 \rfloor, \lfloor 2/3 \rfloor, \lfloor 3/3 \rfloor`
  = 0 0 0 1; the rest agree (2 | 4 3 4 3 | 5 | 6 7 6 7). For (8, 20) the first stage is
  0 0 0 1 1 1 against 0 1 0 1 0 1. A second difference is in the network, not the indices: the
  code's ``NetworkCIFAR`` takes its reduction cells from ``genotype.reductions`` (the *searched*
  network's, e.g. 2 and 5), so in a deeper network a searched reduction gene sits in a normal
  position and vice versa; jaxnas follows the paper (reductions at n // 3 and 2n // 3, where the
  searched reduction genes are placed). jaxnas uses the paper's version; this one exists so the
  difference is tested.
  """
  _check_counts(num_searched, n)
  if n <= num_searched:
    return tuple(range(n))
  g = num_searched
  out = []
  for i in range(n):
    if i < n // 3:
      c = i % g // 3
    elif i == n // 3:
      c = g // 3
    elif i < 2 * n // 3:
      c = i % (2 * g // 3 - 1 - g // 3) + g // 3 + 1
    elif i == 2 * n // 3:
      c = 2 * g // 3
    else:
      c = i % (g - 1 - 2 * g // 3) + 2 * g // 3 + 1
    out.append(c)
  return tuple(out)


def deepen(genotype: CellGenotype, n: int) -> CellGenotype:
  """An ``n``-cell genotype from a searched one by :func:`algorithm1_indices` (the paper's Alg. 1).

  Cell ``i`` gets the genes of searched cell ``c_i``; the reductions are ``n // 3`` and
  ``2n // 3``. Algorithm 1 assumes the searched network reduces at ``|C| // 3`` and
  ``2|C| // 3``; a genotype that reduces elsewhere (DARTOpti's ResNet-18 at 1, 2, 3) is refused,
  except for ``n = |C|``, which returns it unchanged.

  Raises:
    JaxnasError: for ``n < 1``, a genotype that is not per-cell, or an undefined case of
      Algorithm 1.
  """
  if not isinstance(genotype, CellGenotype):
    raise JaxnasError(f"Algorithm 1 needs a per-cell genotype (a d-darts run's), got "
                      f"{type(genotype).__name__}")
  _check_counts(len(genotype.cells), n)
  searched = reduction_cells(len(genotype.cells))
  if genotype.reductions != searched:
    if n == len(genotype.cells):
      return genotype
    raise JaxnasError(f"Algorithm 1 needs the searched reductions at |C|/3 and 2|C|/3 "
                      f"({list(searched)} for {len(genotype.cells)} cells); this genotype reduces "
                      f"at {list(genotype.reductions)} (a hand-made network's): derive it without "
                      f"--cells, or with --cells {len(genotype.cells)}")
  indices = algorithm1_indices(len(genotype.cells), n)
  return CellGenotype(tuple(genotype.cells[c] for c in indices), genotype.concat,
                      reduction_cells(n))
