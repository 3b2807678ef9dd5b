r"""Figures of a search run: ``jaxnas plot RUN_DIR`` writes PNGs into ``RUN_DIR/plots/``.

From what :mod:`jaxnas.run` leaves in a run directory (``config.json``, ``metrics.jsonl``,
``alphas.npz``, ``genotype.json`` and, with ``--save-trajectory N``, the snapshots
``trajectory/step_*.npz`` of :mod:`jaxnas.trajectory`):

- ``mixing_<cell>.png`` (``normal``/``reduce`` for DARTS, ``cell`` for NAS-Bench-201): the mixing
  weights of every edge over the search (from the ``--save-trajectory`` snapshots, else from the
  alphas the search saves at its start and each epoch's end, ``alphas_history/``), one figure
  per cell type, one panel per edge (row: the edge's target node, column: its source), one line
  per operation, one shared legend. The mixing
  weights are the run's relaxation of the saved alphas, deterministic (``relaxation(alphas, None)``,
  what derivation sees): :math:`\mathrm{softmax}(\alpha_e)` for DARTS, :math:`\sigma(\alpha_e)` for
  FairDARTS. Needs one of the two; without them the command says so and draws only
- ``mixing_final.png``: the final mixing weights (``alphas.npz``) as an edges x operations table.
- ``genotype_<cell>.png``: the derived cell as in the DARTS paper's figures: inputs
  :math:`c_{k-2}`, :math:`c_{k-1}` (green), intermediate nodes 0..3 (blue), output :math:`c_k`
  (yellow), each edge labelled with its operation; NAS-Bench-201 cells have input node 0,
  intermediate nodes 1 and 2 and output node 3, and their ``none`` edges are drawn dotted.
  Nodes are placed by hand in layers (a node's layer is one more than its deepest input's),
  edges bend around nodes they would cross, and each label takes the first spot along its edge
  that overlaps no node and no other label.
- ``curves.png``: search-train and search-val loss and accuracy per logged step from
  ``metrics.jsonl``.

Matplotlib draws through :class:`matplotlib.figure.Figure` objects (the Agg renderer), never
pyplot, so no global backend or figure registry is touched.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import sys
from typing import NamedTuple

import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["plot_run", "plot_curves", "plot_train_curves", "train_series", "plot_mixing_trajectory", "plot_mixing_final",
           "plot_genotype", "draw_cell", "cell_graph", "layout_cell", "CellGraph"]

PLOTS_DIR = "plots"
_SNAPSHOT = re.compile(r"step_(\d+)\.npz")
_DPI = 130
_COLOURS = {"input": "#b8e0b8", "node": "#b7d7f0", "output": "#f3e6a0"}


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=_DPI)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.savefig(path, dpi=_DPI, facecolor="white")
  return path


# ----------------------------------------------------------------------------------------------
# Reading a run directory.


class _Run(NamedTuple):
  path: pathlib.Path
  config: dict
  space: str
  op_names: tuple
  kind: str = "search"  # "search" (jaxnas search) or "train" (jaxnas train)


def _read_run(run_dir) -> _Run:
  """The run directory's config; a ``jaxnas train`` run is told by its ``genotype`` record."""
  path = pathlib.Path(run_dir)
  if not path.is_dir():
    raise JaxnasError(f"run directory {path} not found; pass a directory written by "
                      "'jaxnas search' or 'jaxnas train'")
  cfg_path = path / "config.json"
  if not cfg_path.is_file():
    raise JaxnasError(f"{cfg_path} not found; RUN_DIR must be a run directory of 'jaxnas search' "
                      "or 'jaxnas train' (or of 'jaxnas search --seeds N')")
  try:
    config = json.loads(cfg_path.read_text())
    kind = "search" if "space" in config["config"] else "train"
    space = config["config"]["space"] if kind == "search" else config["genotype"]["space"]
  except (ValueError, KeyError, TypeError) as e:
    raise JaxnasError(f"{cfg_path} is not a jaxnas config.json ({type(e).__name__}: {e}); the "
                      "run directory is damaged") from None
  from jaxnas import spaces
  if space not in spaces.SPACES:
    raise JaxnasError(f"{cfg_path} names an unknown space {space!r}; the run directory is damaged")
  return _Run(path, config, space, tuple(spaces.get(space).op_names), kind)


def _relaxation(run: _Run):
  """``fn(alphas) -> mixing`` (NumPy dicts): the run's relaxation, deterministic."""
  import jax.numpy as jnp
  from jaxnas import methods, search
  recipe_json = run.config.get("recipe") or {}
  recipe = methods.Recipe(name=str(recipe_json.get("name", "run")), description="",
                          relaxation=recipe_json.get("relaxation", "softmax"))
  options = tuple((k, tuple(v) if isinstance(v, list) else v)
                  for k, v in recipe_json.get("relaxation_options") or [])
  relax_fn = search.make_relaxation(recipe.replace(relaxation_options=options), run.op_names)

  def mixing(alphas):
    out = relax_fn({k: jnp.asarray(v) for k, v in alphas.items()}, None)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}

  return mixing


def _read_alphas(path: pathlib.Path, prefix: str = "") -> dict:
  with np.load(path, allow_pickle=False) as f:
    return {k[len(prefix):]: np.asarray(f[k]) for k in f.files if k.startswith(prefix)
            and k != "step"}


def _snapshots(run: _Run, folder: str = "trajectory",
               prefix: str = "alphas/") -> list[tuple[int, dict]]:
  """``(step, alphas)`` of every snapshot in ``RUN_DIR/folder``, in step order (alphas only are
  read): ``trajectory/`` (``--save-trajectory``) or ``alphas_history/`` (each epoch's end)."""
  folder = run.path / folder
  out = []
  for f in sorted(folder.glob("step_*.npz")) if folder.is_dir() else ():
    if not _SNAPSHOT.fullmatch(f.name):
      continue
    try:
      alphas = _read_alphas(f, prefix)
    except (OSError, ValueError) as e:
      raise JaxnasError(f"{f} cannot be read ({e}); the run directory is damaged") from None
    out.append((int(_SNAPSHOT.fullmatch(f.name).group(1)), alphas))
  return sorted(out, key=lambda s: s[0])


def _seed_dirs(path: pathlib.Path) -> list[pathlib.Path]:
  """The ``seed-<s>/`` run directories of a ``jaxnas search --seeds N`` output, in seed order."""
  found = [d for d in path.glob("seed-*") if d.is_dir() and d.name[5:].isdigit()
           and (d / "config.json").is_file()] if path.is_dir() else []
  return sorted(found, key=lambda d: int(d.name[5:]))


def _metrics(run: _Run) -> list[dict]:
  path = run.path / "metrics.jsonl"
  rows = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      raise JaxnasError(f"line {n} of {path} is not JSON; the run directory is damaged") from None
    if isinstance(row, dict) and "step" in row:
      rows.append(row)
  return rows


# ----------------------------------------------------------------------------------------------
# Edge names.


def _state_label(space: str, state: int, num_states: int | None = None) -> str:
  """Mathtext name of a cell state: DARTS 0, 1 = c_{k-2}, c_{k-1}, then nodes 0..; NB201 0..3."""
  if space == "nb201":
    return {0: r"$c_{k-1}$", 3: r"$c_{k}$"}.get(state, str(state))
  if state == -1:
    return r"$c_{k}$"
  return {0: r"$c_{k-2}$", 1: r"$c_{k-1}$"}.get(state, str(state - 2))


def _cell_tables(mixing: dict, num_ops: int) -> tuple[dict, list]:
  """The ``(edges, ops)`` tables of a mixing dict, and the keys that are not such tables.

  ``(E, K)`` arrays are cell types (``normal``, ``reduce``, ``cell``); a ``(N, E, K)`` array (one
  table per cell, D-DARTS' ``cells``) becomes ``cells_0 .. cells_{N-1}``; anything else (PC-DARTS'
  per-edge β, ``normal_edges``) is left out and named.
  """
  tables, skipped = {}, []
  for key, value in mixing.items():
    value = np.asarray(value)
    if value.ndim == 2 and value.shape[1] == num_ops:
      tables[key] = value
    elif value.ndim == 3 and value.shape[2] == num_ops:
      tables.update({f"{key}_{i}": v for i, v in enumerate(value)})
    else:
      skipped.append(key)
  return tables, skipped


def _edges(space: str, num_edges: int) -> list[tuple[int, int]]:
  """``(to_state, from_state)`` of each alphas row, in the space's edge order."""
  from jaxnas import derive
  if space == "nb201":
    return list(derive.NB201_EDGES)
  nodes = 0
  while len(derive.darts_edge_sources(nodes)) < num_edges:
    nodes += 1
  return [(node + 2, src) for node, src in derive.darts_edge_sources(nodes)]


def _op_colours(op_names) -> dict:
  from matplotlib import colormaps
  cmap = colormaps["tab10"]
  return {op: cmap(i % 10) for i, op in enumerate(op_names)}


# ----------------------------------------------------------------------------------------------
# (a) Mixing weights.


def plot_mixing_trajectory(steps, mixings: list[dict], cell: str, *, space: str, op_names,
                           path, title: str = "") -> pathlib.Path:
  """One figure for cell type ``cell``: a panel per edge, a line per operation over the steps.

  Args:
    steps: the search step of each snapshot.
    mixings: one ``{cell: (edges, ops)}`` dict of mixing weights per snapshot.
    cell: the key to draw (``"normal"``, ``"reduce"`` or ``"cell"``).
    space: ``"darts"`` or ``"nb201"`` (names the edges).
    op_names: the operations, in column order.
    path: the PNG to write.
    title: the figure's title.

  Returns:
    ``path``.
  """
  weights = np.stack([m[cell] for m in mixings])  # (T, E, K)
  edges = _edges(space, weights.shape[1])
  targets = sorted({t for t, _ in edges})
  sources = sorted({s for _, s in edges})
  rows, cols = len(targets), len(sources)
  height = 1.8 * rows + 0.5
  fig = _figure(2.3 * cols + 0.7, height)
  grid = fig.add_gridspec(rows, cols, hspace=0.6, wspace=0.1, left=0.09, right=0.985,
                          top=1 - 0.3 / height, bottom=0.55 / height)
  colours = _op_colours(op_names)
  share, lines = None, {}
  for e, (to, src) in enumerate(edges):
    r, c = targets.index(to), sources.index(src)
    ax = fig.add_subplot(grid[r, c], sharex=share, sharey=share)
    share = share or ax
    for k, op in enumerate(op_names[:weights.shape[2]]):
      (lines[op],) = ax.plot(steps, weights[:, e, k], color=colours[op], lw=1.4,
                             marker="o" if len(steps) < 3 else None, ms=3)
    ax.set_title(f"{_state_label(space, src)} → {_state_label(space, to)}", fontsize=9, pad=3)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, lw=0.5)
    if c == 0:
      ax.set_ylabel("mixing weight", fontsize=8)
    else:
      ax.tick_params(labelleft=False)
    if r == rows - 1:
      ax.set_xlabel("search step", fontsize=8)
  # The legend goes in the empty upper-right corner (the first node has the fewest inputs).
  first_row = sum(1 for t, _ in edges if t == targets[0])
  if first_row < cols:
    holder = fig.add_subplot(grid[0, first_row:])
    holder.axis("off")
    holder.legend(list(lines.values()), list(lines), loc="center", fontsize=8.5, frameon=False,
                  ncol=2 if len(lines) > 4 and cols - first_row > 1 else 1, title=title,
                  title_fontsize=8.5)
  else:
    fig.legend(list(lines.values()), list(lines), loc="upper center", ncol=len(lines),
               fontsize=8, frameon=False)
  return _save(fig, pathlib.Path(path))


def plot_mixing_final(mixing: dict, *, space: str, op_names, path,
                      title: str = "") -> pathlib.Path:
  """The final mixing weights as an edges x operations table per cell type, values printed.

  Colours run from each row's smallest weight (white) to its largest (dark blue), so the ranking
  the derivation reads is visible even when the weights are all close to uniform; each row's
  largest weight is printed in bold.
  """
  cells = list(mixing)
  n_edges = max(m.shape[0] for m in mixing.values())
  n_ops = len(op_names)
  fig = _figure(0.95 * n_ops * len(cells) + 1.5 * len(cells) + 0.3, 0.38 * n_edges + 2.1)
  axes = fig.subplots(1, len(cells), squeeze=False)[0]
  for ax, cell in zip(axes, cells):
    w = mixing[cell]
    edges = _edges(space, w.shape[0])
    lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    shade = (w - lo) / np.where(hi > lo, hi - lo, 1.0)
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1.25, aspect="auto")
    spread = float(np.max(hi - lo))  # enough digits that each row's ranking shows
    digits = 2 if spread >= 0.05 else 3 if spread >= 0.005 else 4
    for (e, k), v in np.ndenumerate(w):
      ax.text(k, e, f"{v:.{digits}f}", ha="center", va="center", fontsize=7.5,
              color="white" if shade[e, k] > 0.7 else "black",
              fontweight="bold" if v == hi[e, 0] else "normal")
    ax.set_xticks(range(w.shape[1]), list(op_names)[:w.shape[1]], rotation=35, ha="right",
                  fontsize=8)
    ax.set_yticks(range(w.shape[0]),
                  [f"{_state_label(space, s)} → {_state_label(space, t)}" for t, s in edges],
                  fontsize=8)
    ax.set_title("NAS-Bench-201 cell" if cell == "cell" else f"{cell} cell", fontsize=10)
  fig.suptitle((title + "\n" if title else "") + "final mixing weights (colour: each edge's "
               "smallest to largest; bold: its largest)", fontsize=9)
  fig.tight_layout()
  return _save(fig, pathlib.Path(path))


# ----------------------------------------------------------------------------------------------
# (b) The derived cell as a graph.


class CellGraph(NamedTuple):
  """A derived cell as a graph: nodes ``(state, label, kind)`` and edges ``(op, src, dst)``.

  ``kind`` is ``"input"``, ``"node"`` or ``"output"``; edges with ``op=None`` are the unlabelled
  edges into the output node (DARTS' concatenation).
  """

  nodes: tuple
  edges: tuple


def cell_graph(genotype, cell: str = "normal") -> CellGraph:
  """The graph of one cell of a :class:`~jaxnas.derive.Genotype`.

  DARTS states are 0 (:math:`c_{k-2}`), 1 (:math:`c_{k-1}`), 2.. (intermediate nodes 0..) and
  the output -1 (:math:`c_k`), fed by the ``*_concat`` states. Genes are ``(op, from)`` pairs, two
  per node, or FairDARTS' ``(op, to, from)`` triples (a node that no gene names is left out; one
  that only feeds others is drawn without inputs, as in published FairDARTS cells). NB201
  states are its nodes 0..3 (0 the input, 3 the output); its six genes are in
  :data:`jaxnas.derive.NB201_EDGES` order.
  """
  from jaxnas import derive
  genes = list(getattr(genotype, cell))
  if genotype.space == "nb201":
    edges = tuple((op, src, dst) for (op, src), (dst, _) in zip(genes, derive.NB201_EDGES))
    nodes = tuple((s, _state_label("nb201", s), "input" if s == 0 else
                   "output" if s == 3 else "node") for s in range(4))
    return CellGraph(nodes, edges)
  if genes and len(genes[0]) == 3:
    edges = [(op, int(src), int(dst)) for op, dst, src in genes]
  else:
    edges = [(op, int(src), 2 + i // 2) for i, (op, src) in enumerate(genes)]
  concat = list(getattr(genotype, f"{cell}_concat"))
  present = {0, 1} | {d for _, _, d in edges} | {s for _, s, _ in edges}
  edges += [(None, s, -1) for s in concat if s in present]
  nodes = [(0, _state_label("darts", 0), "input"), (1, _state_label("darts", 1), "input")]
  nodes += [(s, _state_label("darts", s), "node") for s in sorted(present - {0, 1})]
  nodes.append((-1, _state_label("darts", -1), "output"))
  return CellGraph(tuple(nodes), tuple(edges))


def layout_cell(graph: CellGraph, *, dx: float = 3.2, dy: float = 1.8) -> dict:
  """Hand-placed layered coordinates ``{state: (x, y)}`` of a cell's nodes.

  Inputs sit in layer 0; a node's layer is one more than the deepest layer among its inputs
  (``none`` edges count, so an NB201 cell keeps its 0-1-2-3 chain); the output is one layer past
  the deepest node. Nodes of a layer are stacked ``dy`` apart around ``y = 0`` in state order,
  the first on top; layers are ``dx`` apart, but for a gap of ``1.35 dx`` after the inputs, where
  most edges (and their labels) are.
  """
  kinds = {s: kind for s, _, kind in graph.nodes}
  layer = {s: 0 for s, k in kinds.items() if k == "input"}
  inputs: dict = {}
  for _, src, dst in graph.edges:
    inputs.setdefault(dst, []).append(src)
  pending = [s for s, k in kinds.items() if k == "node"]
  for _ in range(len(pending) + 1):
    for s in list(pending):
      srcs = [p for p in inputs.get(s, []) if kinds.get(p) != "output"]
      if all(p in layer for p in srcs):
        layer[s] = 1 + max((layer[p] for p in srcs), default=0)
        pending.remove(s)
  for s in pending:  # a cycle cannot happen in a genotype; place leftovers after the rest
    layer[s] = 1 + max(layer.values())
  last = max(layer.values(), default=0)
  for s, k in kinds.items():
    if k == "output":
      layer[s] = last + 1
  by_layer: dict = {}
  for s, _, _ in graph.nodes:
    by_layer.setdefault(layer[s], []).append(s)
  pos = {}
  for lay, states in by_layer.items():
    for i, s in enumerate(states):
      x = lay * dx + (0.35 * dx if lay > 0 else 0.0)  # a wider first gap: most labels are there
      pos[s] = (x, ((len(states) - 1) / 2 - i) * dy)
  return pos


def _bezier(p0, p1, rad: float, t):
  """Points of matplotlib's ``arc3,rad`` curve from ``p0`` to ``p1`` at parameters ``t``."""
  (x0, y0), (x1, y1) = p0, p1
  cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
  t = np.asarray(t, np.float64)[..., None]
  return ((1 - t) ** 2 * np.array([x0, y0]) + 2 * (1 - t) * t * np.array([cx, cy])
          + t ** 2 * np.array([x1, y1]))


def _hits(box, points) -> bool:
  (x0, y0, x1, y1) = box
  return bool(np.any((points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0)
                     & (points[:, 1] < y1)))


def _route(graph: CellGraph, pos: dict, boxes: dict) -> list[tuple]:
  """``(op, src, dst, rad)`` per edge: the bend of each ``arc3`` curve.

  Each edge, in order, takes the candidate bend (straight first, then growing bends to either
  side) that crosses no node it does not join, scored by how many of its points pass close to the
  curves already routed (fewer crossings) plus a small cost per unit of bend.
  """
  ts = np.linspace(0.1, 0.9, 48)
  routed, drawn = [], []
  for op, src, dst in graph.edges:
    others = [b for s, b in boxes.items() if s not in (src, dst)]
    best, best_score = 0.0, math.inf
    for rad in (0.0, 0.2, -0.2, 0.32, -0.32, 0.45, -0.45, 0.6, -0.6):
      pts = _bezier(pos[src], pos[dst], rad, ts)
      if any(_hits(b, pts) for b in others):
        continue
      # Curves sharing an end meet there anyway: only points away from both ends count.
      away = pts[(np.linalg.norm(pts - np.array(pos[src]), axis=1) > 0.9)
                 & (np.linalg.norm(pts - np.array(pos[dst]), axis=1) > 0.9)]
      close = sum(int(np.sum(np.min(np.linalg.norm(away[:, None] - q[None], axis=-1), axis=1)
                             < 0.3)) for q in drawn)
      score = close + 2 * abs(rad)
      if score < best_score:
        best, best_score = rad, score
    drawn.append(_bezier(pos[src], pos[dst], best, ts))
    routed.append((op, src, dst, best))
  return routed


def plot_genotype(genotype, cell: str, path, *, title: str = "") -> pathlib.Path:
  """Draws one cell of ``genotype`` (see :func:`draw_cell`) into the PNG ``path``."""
  fig, _ = draw_cell(genotype, cell, title=title)
  return _save(fig, pathlib.Path(path))


def draw_cell(genotype, cell: str = "normal", *, title: str = ""):
  """One cell of ``genotype`` in the style of the DARTS paper's figures (matplotlib only).

  See the module docstring for the layout; :func:`cell_graph` and :func:`layout_cell` give the
  graph and the node positions.

  Returns:
    ``(figure, boxes)``: the Matplotlib figure and ``{"nodes": [...], "labels": [...]}``, the
    ``(x0, y0, x1, y1)`` data-coordinate boxes of the nodes and of the edge labels as drawn.
  """
  from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
  graph = cell_graph(genotype, cell)
  pos = layout_cell(graph)
  half_w, half_h = 0.5, 0.3
  boxes = {s: (x - half_w, y - half_h, x + half_w, y + half_h) for s, (x, y) in pos.items()}
  routed = _route(graph, pos, boxes)
  extent = np.concatenate([_bezier(pos[s], pos[d], r, np.linspace(0, 1, 21))
                           for _, s, d, r in routed] + [np.array(list(pos.values()))])
  x_lo, x_hi = extent[:, 0].min() - 0.9, extent[:, 0].max() + 0.9
  y_lo, y_hi = extent[:, 1].min() - 0.65, extent[:, 1].max() + 0.65
  scale, head = 0.62, 0.4 if title else 0.0  # inches per data unit; title band
  fig = _figure((x_hi - x_lo) * scale, (y_hi - y_lo) * scale + head)
  ax = fig.add_axes((0, 0, 1, (y_hi - y_lo) * scale / ((y_hi - y_lo) * scale + head)))
  ax.set_xlim(x_lo, x_hi)
  ax.set_ylim(y_lo, y_hi)
  ax.set_aspect("equal")
  ax.axis("off")
  patches = {}
  for s, label, kind in graph.nodes:
    x, y = pos[s]
    patches[s] = ax.add_patch(FancyBboxPatch(
        (x - half_w, y - half_h), 2 * half_w, 2 * half_h, fc=_COLOURS[kind], ec="0.25", lw=1.0,
        boxstyle="round,pad=0.02,rounding_size=0.12", zorder=3))
    ax.text(x, y, label, ha="center", va="center", fontsize=11, zorder=4)
  for op, src, dst, rad in routed:
    faint = op is None or op == "none"
    ax.add_patch(FancyArrowPatch(
        pos[src], pos[dst], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
        mutation_scale=12, lw=0.9 if faint else 1.1, color="0.6" if faint else "0.15",
        linestyle=":" if op == "none" else "-", patchA=patches[src], patchB=patches[dst],
        shrinkA=1, shrinkB=1, zorder=2))
  # Labels: the first spot along the curve (middle first) that overlaps no node and no label.
  renderer = fig.canvas.get_renderer()
  to_data = ax.transData.inverted()
  taken = list(boxes.values())
  for op, src, dst, rad in routed:
    if op is None:
      continue
    text = ax.text(0, 0, op, ha="center", va="center", fontsize=8.5, zorder=5,
                   color="0.45" if op == "none" else "black",
                   bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.95))
    best, best_overlap = None, math.inf
    for t in (0.5, 0.42, 0.58, 0.35, 0.65, 0.28, 0.72, 0.22, 0.78, 0.16, 0.84):
      x, y = _bezier(pos[src], pos[dst], rad, t)
      text.set_position((x, y))
      ext = text.get_window_extent(renderer)
      (bx0, by0), (bx1, by1) = to_data.transform([[ext.x0, ext.y0], [ext.x1, ext.y1]])
      box = (bx0 - 0.04, by0 - 0.04, bx1 + 0.04, by1 + 0.04)
      overlap = sum(_area(box, other) for other in taken)
      if overlap < best_overlap:
        best, best_overlap = ((x, y), box), overlap
      if overlap == 0:
        break
    text.set_position(best[0])
    taken.append(best[1])
  if title:
    fig.text(0.5, 1 - 0.06 / ((y_hi - y_lo) * scale + head), title, ha="center", va="top",
             fontsize=10)
  return fig, {"nodes": list(boxes.values()), "labels": taken[len(boxes):]}


def _area(a, b) -> float:
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  return max(w, 0.0) * max(h, 0.0)


# ----------------------------------------------------------------------------------------------
# (c) Curves.


def plot_curves(rows: list[dict], path, *, steps_per_epoch: int | None = None,
                title: str = "") -> pathlib.Path:
  """Loss and accuracy of search-train and search-val per logged step (``metrics.jsonl``)."""
  step = np.array([r["step"] for r in rows], np.float64)
  fig = _figure(10, 3.8)
  axes = fig.subplots(1, 2)
  for ax, (key, name) in zip(axes, (("loss", "cross-entropy loss"), ("accuracy", "accuracy"))):
    for part, colour, label in (("train", "tab:blue", "search-train (weights)"),
                                ("val", "tab:orange", "search-val (architecture)")):
      values = np.array([r.get(f"{part}_{key}", np.nan) for r in rows], np.float64)
      if np.isfinite(values).any():
        ax.plot(step, values, color=colour, lw=1.2, label=label, marker="o" if len(step) < 3
                else None)
    ends = (range(steps_per_epoch, int(step.max()), steps_per_epoch)
            if steps_per_epoch and len(step) else ())
    for e in ends:
      ax.axvline(e, color="0.8", lw=0.7, zorder=0)
    ax.set_xlabel("step" + (f" (grey lines: ends of epochs of {steps_per_epoch} steps)"
                            if len(ends) else ""), fontsize=9)
    ax.set_ylabel(name, fontsize=9)
    ax.grid(alpha=0.3, lw=0.5)
    ax.tick_params(labelsize=8)
    if key == "accuracy":
      ax.set_ylim(0, 1.02)
  handles, labels = axes[0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=9, frameon=False)
  if title:
    fig.text(0.01, 0.01, title, fontsize=8, color="0.35")
  fig.tight_layout(rect=(0, 0.03, 1, 0.92))
  return _save(fig, pathlib.Path(path))


def plot_train_curves(rows: list[dict], path, *, steps_per_epoch: int | None = None,
                      title: str = "") -> pathlib.Path:
  """Curves of a ``jaxnas train`` run from its ``metrics.jsonl``, three panels side by side.

  Loss and accuracy of the logged training steps (the batch's, in train mode: drop-path and
  augmentation on; ``train_loss`` includes the weighted auxiliary loss, ``train_ce`` does not)
  and of each epoch's evaluation on the test set (the rows with ``test_*``, drawn at the step that
  ends the epoch); the learning rate and the drop-path probability per logged step.
  """
  steps = lambda key: train_series(rows, key)[0]
  values = lambda key: train_series(rows, key)[1]
  fig = _figure(13, 3.8)
  axes = fig.subplots(1, 3)
  series = ((0, "train_ce", "tab:blue", "training batch (cross-entropy)"),
            (0, "test_loss", "tab:red", "test set, each epoch"),
            (1, "train_accuracy", "tab:blue", "training batch (cross-entropy)"),
            (1, "test_accuracy", "tab:red", "test set, each epoch"))
  for i, key, colour, label in series:
    if not len(steps(key)) and key == "train_ce":  # runs written before train_ce existed
      key = "train_loss"
    if len(steps(key)):
      few = len(steps(key)) < 3 or key.startswith("test")
      axes[i].plot(steps(key), values(key), color=colour, lw=1.2, label=label,
                   marker="o" if few else None, ms=3.5)
  aux = steps("train_aux_ce")
  if len(aux):
    axes[0].plot(aux, values("train_aux_ce"), color="tab:green", lw=1.0, alpha=0.8,
                 label="training batch, auxiliary head")
  for key, colour, name in (("lr", "tab:purple", "learning rate"),
                            ("drop_prob", "tab:gray", "drop-path probability")):
    if len(steps(key)):
      axes[2].plot(steps(key), values(key), color=colour, lw=1.2, label=name,
                   marker="o" if len(steps(key)) < 3 else None, ms=3.5)
  last = max((r["step"] for r in rows), default=0)
  for ax, name in zip(axes, ("loss", "accuracy", "learning rate, drop-path probability")):
    ax.set_xlabel("step" + (f" (epochs of {steps_per_epoch} steps)" if steps_per_epoch else ""),
                  fontsize=9)
    ax.set_ylabel(name, fontsize=9)
    ax.grid(alpha=0.3, lw=0.5)
    ax.tick_params(labelsize=8)
    ax.set_xlim(0, max(last, 1) * 1.02)
  axes[1].set_ylim(0, 1.02)
  handles, labels = [], []
  for ax in axes:
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in labels:
        handles.append(h)
        labels.append(l)
  if handles:
    fig.legend(handles, [l.replace(" (cross-entropy)", "") for l in labels], loc="upper center",
               ncol=len(handles), fontsize=9, frameon=False)
  if title:
    fig.text(0.01, 0.01, title, fontsize=8, color="0.35")
  fig.tight_layout(rect=(0, 0.03, 1, 0.92))
  return _save(fig, pathlib.Path(path))


def train_series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, values)`` of metric ``key`` over the rows that hold a finite number for it."""
  kept = [r for r in rows if _finite(r.get(key))]
  return (np.array([r["step"] for r in kept], np.float64),
          np.array([r[key] for r in kept], np.float64))


def _finite(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


# ----------------------------------------------------------------------------------------------
# The command.


def _plot_train_run(run: _Run, out: pathlib.Path, written: list, notes: list) -> None:
  """The figures of a ``jaxnas train`` run: its genotype's cells and its training curves."""
  from jaxnas import derive
  genotype = derive.Genotype.from_dict(run.config["genotype"])
  label = pathlib.Path(str(run.config["config"].get("genotype", ""))).name or "genotype"
  dataset = (run.config.get("dataset") or {}).get("name", "")
  title = f"{run.path.name}: trained {label} on {dataset}"
  cells = ("normal",) if genotype.space == "nb201" else ("normal", "reduce")
  for cell in cells:
    name = "cell" if genotype.space == "nb201" else cell
    what = "NAS-Bench-201 cell" if name == "cell" else f"{name} cell"
    written.append(plot_genotype(genotype, cell, out / f"genotype_{name}.png",
                                 title=f"{what} of {label} ({run.path.name})"))
  if (run.path / "metrics.jsonl").is_file() and (rows := _metrics(run)):
    written.append(plot_train_curves(rows, out / "curves.png",
                                     steps_per_epoch=run.config.get("steps_per_epoch"),
                                     title=title))
  else:
    notes.append("no metrics in metrics.jsonl: no loss/accuracy curves")


def plot_run(run_dir, *, stdout=None) -> list[pathlib.Path]:
  """Draws every figure the run directory has the data for into ``RUN_DIR/plots/``.

  Prints one line per file written and one per figure it could not draw and why (no snapshots,
  no genotype, no metrics). A ``jaxnas train`` run gets its genotype's cells and its training
  curves (:func:`plot_train_curves`); the output of ``jaxnas search --seeds N`` gets every
  ``seed-<s>/`` run's figures in that run's own ``plots/``.

  Args:
    run_dir: a directory written by ``jaxnas search`` or ``jaxnas train``.
    stdout: where the lines go (default ``sys.stdout``).

  Returns:
    The PNG paths written.

  Raises:
    JaxnasError: one line if ``run_dir`` is missing or damaged, or holds nothing to plot.
  """
  stdout = stdout or sys.stdout
  root = pathlib.Path(run_dir)
  if not (root / "config.json").exists() and (seed_dirs := _seed_dirs(root)):
    return [path for d in seed_dirs for path in plot_run(d, stdout=stdout)]
  run = _read_run(run_dir)
  out = run.path / PLOTS_DIR
  out.mkdir(exist_ok=True)
  if run.kind == "train":
    written, notes = [], []
    _plot_train_run(run, out, written, notes)
    _report(written, notes, stdout)
    return written
  recipe = (run.config.get("recipe") or {}).get("name", "")
  dataset = (run.config.get("dataset") or {}).get("name", "")
  title = f"{run.path.name}: {recipe} on {run.space}" + (f", {dataset}" if dataset else "")
  written, notes = [], []
  mixing_of = _relaxation(run)

  def tables(alphas):
    found, skipped = _cell_tables(mixing_of(alphas), len(run.op_names))
    for key in skipped:
      if f"{key} is not an edges x operations table" not in " ".join(notes):
        notes.append(f"{key} is not an edges x operations table: not drawn")
    return found

  snaps = _snapshots(run)
  if not snaps:
    from jaxnas.run import ALPHAS_HISTORY
    snaps = _snapshots(run, ALPHAS_HISTORY, "")
    if snaps:
      notes.append(f"mixing weights over the search from the alphas at each epoch's end "
                   f"({ALPHAS_HISTORY}/); --save-trajectory N draws them every N steps")
  if snaps:
    mixings = [tables(a) for _, a in snaps]
    for cell in mixings[0]:
      written.append(plot_mixing_trajectory(
          [s for s, _ in snaps], mixings, cell, space=run.space, op_names=run.op_names,
          path=out / f"mixing_{cell}.png",
          title=f"{title}\nmixing weights, {'the' if cell == 'cell' else 'the ' + cell} cell"))
  else:
    notes.append("no per-step alphas (trajectory/ or alphas_history/): run the search with "
                 "--save-trajectory N to plot the mixing weights over the search; drew the final "
                 "ones only")
  alphas_path = run.path / "alphas.npz"
  if alphas_path.is_file():
    try:
      final = _read_alphas(alphas_path)
    except (OSError, ValueError) as e:
      raise JaxnasError(f"{alphas_path} cannot be read ({e}); the run directory is damaged") \
          from None
    written.append(plot_mixing_final(tables(final), space=run.space, op_names=run.op_names,
                                     path=out / "mixing_final.png", title=title))
  else:
    notes.append(f"no {alphas_path.name} (the search did not finish): no final mixing weights")

  from jaxnas import derive
  genotype_path = run.path / derive.GENOTYPE_FILE
  if genotype_path.is_file():
    genotype = derive.Genotype.load(genotype_path)
    cells = ("normal",) if genotype.space == "nb201" else ("normal", "reduce")
    for cell in cells:
      name = "cell" if genotype.space == "nb201" else cell
      label = "NAS-Bench-201 cell" if name == "cell" else f"{name} cell"
      written.append(plot_genotype(genotype, cell, out / f"genotype_{name}.png",
                                   title=f"{label} derived by {recipe} ({run.path.name})"))
  else:
    notes.append(f"no {derive.GENOTYPE_FILE}: no cell drawing ('jaxnas derive RUN_DIR' writes "
                 "one)")

  if (run.path / "metrics.jsonl").is_file() and (rows := _metrics(run)):
    written.append(plot_curves(rows, out / "curves.png",
                               steps_per_epoch=run.config.get("steps_per_epoch"), title=title))
  else:
    notes.append("no metrics in metrics.jsonl: no loss/accuracy curves")

  if not written:
    raise JaxnasError(f"nothing to plot in {run.path}: it has no alphas, genotype, metrics or "
                      "snapshots; pass a run directory written by 'jaxnas search'")
  _report(written, notes, stdout)
  return written


def _report(written, notes, stdout) -> None:
  for path in written:
    print(f"wrote {path}", file=stdout)
  for note in notes:
    print(f"note: {note}", file=stdout)
