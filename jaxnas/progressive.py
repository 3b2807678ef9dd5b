"""Staged searches: a recipe's ``stages``, DrNAS' progressive rebuild between them.

DrNAS (Chen, Wang, Cheng, Tang, Hsieh, ICLR 2021, §3.3; xiangning-chen/DrNAS
``DARTS-space/train_search.py``) searches in two stages of 25 epochs: the first with partial
channels K = 6 and all 7 operations per edge, the second with K = 4 and the 4 operations of largest
α per edge. Between them the reference rebuilds its network in place:

- ``model.pruning(4)`` (``utils.py:prune``): per edge, the ``k`` largest α among the operations
  still kept stay; the others are set to 0, and a boolean mask, fixed from then on, makes their
  mixing weight 0 (the Dirichlet sample is masked and renormalised);
- ``model.wider(4)`` (``net2wider.py``): every candidate operation grows from C/6 to C/4 channels.
  The new channels of each convolution are copies of existing channels drawn uniformly with
  replacement (``torch.randint``), in-channel copies following the index of the layer before;
  batch-norm running statistics are copied with the same index;
- the weight optimiser is rebuilt with the momentum buffers widened like their weights
  (``configure_optimizer``), and the cosine schedule continues over the whole search
  (``configure_scheduler``: ``T_max`` = all epochs, the state loaded);
- nothing else changes: the stem, the cells' preprocessing, the classifier, the alphas of the kept
  operations, the architecture optimiser (Adam keeps its moments) and the data order;
- the architecture steps start at the stage-local epoch 10 (``if epoch >= 10`` with the epoch
  counted from each stage's start): 10 weight-only epochs at the start of every stage.

jaxnas runs a staged recipe (:attr:`jaxnas.methods.Recipe.stages`) as a schedule in the run loop
(:func:`jaxnas.run.run_search` with a :class:`StagedRun`): each stage is a supernet of its own
shapes with its own compiled search step; at a stage boundary the state is rebuilt on the host by
:func:`rebuild` (:func:`prune_alphas`, :func:`widen_state`), and the run's metrics, alphas history,
checkpoints (which record the stage and its masks), stopping rules and derivation go on across the
boundary. A resumed run rebuilds the checkpoint's stage and continues in it.

Where jaxnas departs from the reference, and why:

- the index of copied channels is drawn from the run's PRNG key (a NumPy generator seeded from
  ``fold_in(key, stage)``), so a resumed run rebuilds the same network;
- the two pooling operations' batch norms are one per edge group in jaxnas' supernet (the edges
  leaving one node share their input, so their running statistics are identical,
  :mod:`jaxnas.spaces.darts`); they are widened with one index per group, where the reference draws
  one per edge;
- the FactorizedReduce batch norm (``fr_bn``): the reference widens it with
  ``cat([index1, index2])`` appended at the end, so its statistics no longer line up with the
  channels they normalise (the old second half sits under the first conv's new copies); jaxnas
  widens each half in place, each new channel taking its source channel's statistics;
- the pruned operations are still computed in stage 2 (with weight exactly 0: they contribute
  nothing and their weights get no loss gradient; the weight decay still shrinks them): the edge
  groups compute each operation for all edges of a group at once. The reference skips them.

A stage is a sorted tuple of ``(name, value)`` pairs (frozen and JSON-round-trippable, as every
recipe field) made by :func:`stage`.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnas.errors import JaxnasError

__all__ = ["stage", "stage_dict", "check_stages", "stage_starts", "stage_warmups", "prune_alphas",
           "draw_widen_indices", "widen_group_params", "widen_group_stats", "widen_state",
           "rebuild", "StagedRun", "check_plan", "load_keep_mask", "keep_mask_option", "STAGES_FILE", "STAGE_OPTIONS"]

STAGES_FILE = "stages.json"
STAGE_KEYS = ("length", "space_options", "keep_ops", "arch_warmup")
STAGE_OPTIONS = ("partial_channels",)  # the space options a stage may change (weights widened)
_CONVS = {"sep3": ("a", "b", "c", "d"), "sep5": ("a", "b", "c", "d"), "dil3": ("a", "b"),
          "dil5": ("a", "b")}


def stage(length: float, *, space_options=None, keep_ops: Optional[int] = None,
          arch_warmup: float = 0.0) -> tuple:
  """One stage of :attr:`jaxnas.methods.Recipe.stages`, as sorted ``(name, value)`` pairs.

  Args:
    length: the stage's share of the search's steps (the shares add up to 1).
    space_options: the space options that change from this stage on (``partial_channels``), as a
      dict or pairs; the recipe's ``space_options`` hold the first stage's.
    keep_ops: operations kept per edge from this stage's start (the ``keep_ops`` largest alphas
      among those still kept, DrNAS' ``prune``), or None to keep them all. The first stage
      searches every operation of the relaxation (None).
    arch_warmup: the share of the stage's steps, from its start, without architecture steps
      (DrNAS: 10 of 25 epochs, 0.4).
  """
  opts = tuple(sorted(dict(space_options or {}).items()))
  return tuple(sorted({"length": length, "space_options": opts, "keep_ops": keep_ops,
                       "arch_warmup": arch_warmup}.items()))


def stage_dict(record) -> dict:
  """A stage record as a dict with every key (the defaults of :func:`stage` filled in)."""
  try:
    d = dict(record)
  except (TypeError, ValueError):
    raise JaxnasError(f"a stage is a tuple of (name, value) pairs made by "
                      f"jaxnas.progressive.stage, got {record!r}") from None
  unknown = sorted(set(d) - set(STAGE_KEYS))
  if unknown:
    raise JaxnasError(f"a stage has no field {', '.join(unknown)}; its fields are "
                      + ", ".join(STAGE_KEYS))
  if "length" not in d:
    raise JaxnasError("every stage needs a length (its share of the search)")
  return {"length": d["length"], "space_options": dict(d.get("space_options") or ()),
          "keep_ops": d.get("keep_ops"), "arch_warmup": d.get("arch_warmup", 0.0)}


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_stages(stages, base_space_options=()) -> list:
  """The stages as dicts; a one-line JaxnasError for stages that cannot run.

  Lengths must be > 0 and add up to 1; ``keep_ops`` whole numbers ≥ 1 that do not grow (None for
  the first stage);
  ``arch_warmup`` in [0, 1); a stage may change only ``partial_channels`` (DrNAS' K), and only
  downwards (each operation's channels C/K may grow, never shrink).
  """
  out = [stage_dict(s) for s in stages]
  if not out:
    raise JaxnasError("a staged recipe needs at least one stage")
  if any(not _number(s["length"]) or s["length"] <= 0 for s in out) or abs(
      sum(s["length"] for s in out) - 1.0) > 1e-9:
    raise JaxnasError(f"stage lengths must be numbers > 0 adding up to 1, got "
                      f"{[s['length'] for s in out]}")
  kept = math.inf
  k_prev = dict(base_space_options).get("partial_channels", 1)
  for i, s in enumerate(out):
    k = s["keep_ops"]
    if i == 0 and k is not None:
      raise JaxnasError("the first stage searches every operation; leave its keep_ops out (None)")
    if k is not None:
      if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > kept:
        raise JaxnasError(f"stage {i + 1}: keep_ops must be a whole number ≥ 1 and not above the "
                          f"previous stage's, got {k!r}")
      kept = k
    if not _number(s["arch_warmup"]) or not 0 <= s["arch_warmup"] < 1:
      raise JaxnasError(f"stage {i + 1}: arch_warmup is a share of the stage in [0, 1), got "
                        f"{s['arch_warmup']!r}")
    bad = sorted(set(s["space_options"]) - set(STAGE_OPTIONS))
    if bad:
      raise JaxnasError(f"stage {i + 1} changes space option {', '.join(bad)}; a stage may "
                        f"change only {', '.join(STAGE_OPTIONS)}")
    k_now = s["space_options"].get("partial_channels", k_prev)
    if isinstance(k_now, bool) or not isinstance(k_now, int) or k_now < 1 or k_now > k_prev:
      raise JaxnasError(f"stage {i + 1}: partial_channels {k_now!r} must be a whole number ≥ 1, "
                        f"not above the previous stage's {k_prev} (channels only grow)")
    k_prev = k_now
  return out


def _round(x: float) -> int:
  return int(math.floor(x + 0.5))


def stage_starts(stages, total_steps: int, steps_per_epoch: int) -> tuple:
  """The first step (0-based) of each stage.

  Stage boundaries fall on whole epochs, at ``round(E · (l_1 + … + l_i))`` epochs, when the search
  is ``E ≥`` (number of stages) whole epochs; otherwise (a short ``--steps`` run) on steps, at
  ``round(T · (l_1 + … + l_i))``. Every stage gets at least one step.

  Raises:
    JaxnasError: when the search has fewer steps than stages.
  """
  stages = [stage_dict(s) for s in stages]
  n = len(stages)
  if total_steps < n:
    raise JaxnasError(f"the recipe has {n} stages but the search only {total_steps} steps; give "
                      f"at least {n} (--steps or --epochs)")
  cum = np.cumsum([s["length"] for s in stages])[:-1]
  epochs, whole = divmod(total_steps, steps_per_epoch)
  if whole == 0 and epochs >= n:
    starts = [0] + [steps_per_epoch * _round(epochs * c) for c in cum]
  else:
    starts = [0] + [_round(total_steps * c) for c in cum]
  for i in range(1, n):  # at least one step per stage
    starts[i] = min(max(starts[i], starts[i - 1] + 1), total_steps - (n - i))
  return tuple(int(s) for s in starts)


def stage_warmups(stages, starts, total_steps: int) -> tuple:
  """Steps without architecture steps at the start of each stage: ``round(w_i · length_i)``."""
  stages = [stage_dict(s) for s in stages]
  ends = list(starts[1:]) + [total_steps]
  return tuple(_round(s["arch_warmup"] * (e - b)) for s, b, e in zip(stages, starts, ends))


# --- Pruning: the k largest alphas per edge, mask fixed at the boundary -------------------------

def prune_alphas(alphas: dict, keep_ops: int, op_names, masks: Optional[dict] = None,
                 exclude=("none",)):
  r"""DrNAS' ``prune``: per edge, keep the ``keep_ops`` operations of largest α among those kept.

  .. math:: M_{e,k} = [k \in \mathrm{top}_{k'}\{\alpha_{e,j} : j \text{ kept}\}],\qquad
     \alpha'_{e,k} = M_{e,k}\,\alpha_{e,k}

  as ``utils.py:prune`` in xiangning-chen/DrNAS (which subtracts 10⁶ from the already-pruned
  logits before ``topk``, i.e. picks among the kept ones): the pruned logits become 0, and the mask
  ``M`` is what the relaxation uses from then on (:func:`jaxnas.sampling.dirichlet`'s
  ``keep_mask``). ``exclude`` (``none``, not in the reference's operation set) is never kept.
  Ties are broken towards the lower operation index.

  Args:
    alphas: ``{cell type: (edges, ops)}`` logits (host or device arrays).
    keep_ops: operations kept per edge.
    op_names: the space's operation names.
    masks: the previous stage's masks (same keys, boolean), or None (all kept).
    exclude: operation names never kept.

  Returns:
    ``(alphas, masks)``: NumPy arrays, the pruned logits and the boolean masks.
  """
  names = tuple(op_names)
  allowed = np.asarray([n not in tuple(exclude) for n in names])
  out_a, out_m = {}, {}
  for kind, a in alphas.items():
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[-1] != len(names):
      raise JaxnasError(f"prune_alphas needs (edges, ops) alphas with {len(names)} operations; "
                        f"alphas[{kind!r}] has shape {a.shape}")
    ok = np.broadcast_to(allowed, a.shape)
    if masks is not None:
      ok = ok & np.asarray(masks[kind], bool)
    if np.any(ok.sum(-1) < keep_ops):
      raise JaxnasError(f"cannot keep {keep_ops} operations per edge: some edges of {kind!r} have "
                        f"only {int(ok.sum(-1).min())} left")
    order = np.argsort(-np.where(ok, a, -np.inf), axis=-1, kind="stable")[:, :keep_ops]
    m = np.zeros(a.shape, bool)
    np.put_along_axis(m, order, True, axis=-1)
    out_a[kind] = np.where(m, a, np.zeros((), a.dtype))
    out_m[kind] = m
  return out_a, out_m


# --- Widening: net2wider's channel copies on jaxnas' edge groups --------------------------------

def _is_group(tree) -> bool:
  return isinstance(tree, dict) and "sep3_dw1" in tree


def _groups(tree, path=()):
  """``(path, group)`` of every DARTS edge group (a dict with ``sep3_dw1``) in a params tree."""
  if _is_group(tree):
    yield path, tree
  elif isinstance(tree, dict):
    for k in sorted(tree):
      yield from _groups(tree[k], path + (k,))


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def draw_widen_indices(rng: np.random.Generator, group: dict, new_group: dict, pool_sizes=None
                       ) -> dict:
  """The channels each new channel of one edge group copies, drawn uniformly with replacement.

  For an edge group with ``E`` edges whose operations grow from ``c`` to ``c'`` channels
  (``n = c' − c`` new ones), per edge (``(E, n)`` integers in ``[0, c)``), as ``net2wider.py``'s
  ``torch.randint``: ``{sep3,sep5}_{a,b,c,d}`` (depthwise 1 and its 1×1's inputs, the 1×1's
  outputs and batch norm 1, depthwise 2 and the second 1×1's inputs, its outputs and batch norm
  2), ``{dil3,dil5}_{a,b}``; on stride-2 groups ``fr_in1, fr_out1, fr_in2, fr_out2``
  (FactorizedReduce's two convs: input channels, then output channels of each half); and one
  ``(n_pool,)`` index per pooling batch norm, ``max_pool``/``avg_pool``, from ``pool_sizes``
  (``(old, new)`` sizes) when the group has them.
  """
  e, _, _, c = group["sep3_dw1"].shape
  n = new_group["sep3_dw1"].shape[-1] - c
  idx = {}
  for conv, letters in _CONVS.items():
    for letter in letters:
      idx[f"{conv}_{letter}"] = rng.integers(0, c, size=(e, n))
  if "fr_conv1" in group:
    cin, h = group["fr_conv1"].shape[1:]
    cin_new, h_new = new_group["fr_conv1"].shape[1:]
    for half in ("1", "2"):
      idx[f"fr_in{half}"] = rng.integers(0, cin, size=(e, cin_new - cin))
      idx[f"fr_out{half}"] = rng.integers(0, h, size=(e, h_new - h))
  for name, (old, new) in (pool_sizes or {}).items():
    idx[name] = rng.integers(0, old, size=(new - old,))
  return idx


def _cat_copies(w, idx, axis: int):
  """``concat([w, w[..., idx, ...]], axis)`` per edge (axis 0 is the edge): the copied channels."""
  w = np.asarray(w)
  shape = [1] * w.ndim
  shape[0], shape[axis] = idx.shape[0], idx.shape[1]
  return np.concatenate([w, np.take_along_axis(w, idx.reshape(shape), axis=axis)], axis=axis)


def widen_group_params(group: dict, idx: dict) -> dict:
  r"""One edge group's weights (or their momentum) widened by ``idx`` (:func:`draw_widen_indices`).

  With :math:`s_x(t) = t` for :math:`t < c` and :math:`s_x(t) = x_{t-c}` above (the old channel
  that new channel ``t`` copies, per edge), as ``net2wider.py``'s ``InChannelWider`` then
  ``OutChannelWider`` (no rescaling):

  .. math:: \mathrm{dw1}'[k_1, k_2, t] = \mathrm{dw1}[k_1, k_2, s_a(t)],\quad
     \mathrm{pw1}'[i, j] = \mathrm{pw1}[s_a(i), s_b(j)],\quad
     \mathrm{dw2}'[\cdot, t] = \mathrm{dw2}[\cdot, s_c(t)],\quad
     \mathrm{pw2}'[i, j] = \mathrm{pw2}[s_c(i), s_d(j)]

  for the separable convs (``SepConv.wider``: the second depthwise draws a fresh index ``c``, not
  the first 1×1's ``b``), ``dw'[t] = dw[s_a(t)]``, ``pw'[i, j] = pw[s_a(i), s_b(j)]`` for the
  dilated ones, and FactorizedReduce's ``conv_h'[i, j] = conv_h[s_{in,h}(i), s_{out,h}(j)]``.
  Leaves without channels to widen are returned as they are.
  """
  out = dict(group)
  for conv, letters in _CONVS.items():
    pairs = (("dw1", "pw1"), ("dw2", "pw2")) if len(letters) == 4 else (("dw", "pw"),)
    for (dw, pw), (i_in, i_out) in zip(pairs, (letters[:2], letters[2:])):
      a, b = idx[f"{conv}_{i_in}"], idx[f"{conv}_{i_out}"]
      out[f"{conv}_{dw}"] = _cat_copies(group[f"{conv}_{dw}"], a, 3)
      out[f"{conv}_{pw}"] = _cat_copies(_cat_copies(group[f"{conv}_{pw}"], a, 1), b, 2)
  for half in ("1", "2"):
    if f"fr_conv{half}" in group:
      w = _cat_copies(group[f"fr_conv{half}"], idx[f"fr_in{half}"], 1)
      out[f"fr_conv{half}"] = _cat_copies(w, idx[f"fr_out{half}"], 2)
  return out


def _widen_bn(stats: dict, idx, edges: Optional[int]) -> dict:
  """``{mean, var}`` of one batch norm with ``idx``'s channels appended (per edge if ``edges``)."""
  out = {}
  for k, v in stats.items():
    v = np.asarray(v)
    if edges is None:
      out[k] = np.concatenate([v, v[idx]])
    else:
      out[k] = _cat_copies(v.reshape(edges, -1), idx, 1).reshape(-1)
  return out


def widen_group_stats(stats: dict, idx: dict, edges: int) -> dict:
  """One edge group's running statistics widened like its channels.

  Each batch norm's statistics (``E·c`` channels, edge-major) take the index of the 1×1 conv that
  feeds it (``BNWider(bn, …, index)`` in the reference): ``sep*_bn1`` ``b``, ``sep*_bn2`` ``d``,
  ``dil*_bn`` ``b``; ``fr_bn`` per half (``fr_out1`` for the first ``c/2`` channels, ``fr_out2``
  for the second; a departure, see the module docstring); the pools' shared batch norms their own
  index (one per group). Unknown entries are returned as they are.
  """
  out = dict(stats)
  for conv, letters in _CONVS.items():
    bns = (("bn1", letters[1]), ("bn2", letters[3])) if len(letters) == 4 else (("bn", "b"),)
    for bn, letter in bns:
      out[f"{conv}_{bn}"] = _widen_bn(stats[f"{conv}_{bn}"], idx[f"{conv}_{letter}"], edges)
  if "fr_bn" in stats:
    halves = {}
    for k, v in stats["fr_bn"].items():
      v = np.asarray(v).reshape(edges, -1)
      h = v.shape[1] // 2
      halves[k] = np.concatenate([_cat_copies(v[:, :h], idx["fr_out1"], 1),
                                  _cat_copies(v[:, h:], idx["fr_out2"], 1)], axis=1).reshape(-1)
    out["fr_bn"] = halves
  for name in ("max_pool", "avg_pool"):
    if f"{name}_bn" in stats and name in idx:
      out[f"{name}_bn"] = _widen_bn(stats[f"{name}_bn"], idx[name], None)
  return out


def _replace_at(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _replace_at(tree[path[0]], path[1:], value)
  return out


def widen_state(weights, batch_stats, w_opt_state, new_params, new_stats, seed: int):
  """Weights, statistics and weight-optimiser state of a supernet widened to ``new_params``' shapes.

  Every edge group (a params dict with ``sep3_dw1``) whose operations have fewer channels than in
  ``new_params`` (shapes, e.g. from ``jax.eval_shape`` of the next stage's init) is widened by
  :func:`widen_group_params` with indices from :func:`draw_widen_indices` (group ``g`` in sorted
  path order draws from ``numpy.random.default_rng([seed, g])``); its statistics by
  :func:`widen_group_stats`; every params-shaped subtree of ``w_opt_state`` (SGD's momentum) with
  the same indices, as ``net2wider.configure_optimizer``. Everything else is returned unchanged.

  Returns:
    ``(weights, batch_stats, w_opt_state)`` as NumPy trees; their shapes equal ``new_params``' and
    ``new_stats``'.

  Raises:
    JaxnasError: if the widened shapes do not match (the stages' supernets differ otherwise).
  """
  weights = jax.tree.map(np.asarray, weights)
  batch_stats = jax.tree.map(np.asarray, batch_stats)
  w_def = jax.tree.structure(weights)
  plans = []
  for g, (path, group) in enumerate(_groups(weights)):
    new_group = _get(new_params, path)
    if new_group["sep3_dw1"].shape == group["sep3_dw1"].shape:
      continue
    st = _get(batch_stats, path)
    new_st = _get(new_stats, path)
    pools = {name: (st[f"{name}_bn"]["mean"].shape[0], new_st[f"{name}_bn"]["mean"].shape[0])
             for name in ("max_pool", "avg_pool") if f"{name}_bn" in st}
    idx = draw_widen_indices(np.random.default_rng([seed, g]), group, new_group, pools)
    plans.append((path, idx, group["sep3_dw1"].shape[0]))

  def widen_params(tree):
    for path, idx, _ in plans:
      tree = _replace_at(tree, path, widen_group_params(_get(tree, path), idx))
    return tree

  new_w = widen_params(weights)
  new_bs = batch_stats
  for path, idx, edges in plans:
    new_bs = _replace_at(new_bs, path, widen_group_stats(_get(new_bs, path), idx, edges))
  is_params = lambda x: jax.tree.structure(x) == w_def
  new_opt = jax.tree.map(lambda x: widen_params(jax.tree.map(np.asarray, x)) if is_params(x)
                         else np.asarray(x), w_opt_state, is_leaf=is_params)
  for got, want, what in ((new_w, new_params, "weights"), (new_bs, new_stats, "statistics")):
    got_s = jax.tree.map(np.shape, got)
    want_s = jax.tree.map(lambda s: tuple(s.shape), want)
    if got_s != want_s:
      raise JaxnasError(f"the widened {what} do not have the next stage's shapes; the stages' "
                        "supernets must differ only in partial_channels")
  return new_w, new_bs, new_opt


def rebuild(state, new_model, *, keep_ops: Optional[int], op_names, masks: Optional[dict],
            key, image_shape):
  """The search state carried into the next stage: pruned alphas, widened weights (DrNAS).

  ``alphas`` (and ``masks``) by :func:`prune_alphas` when ``keep_ops`` is given; weights, running
  statistics and the weight optimiser's momentum by :func:`widen_state` to ``new_model``'s shapes
  (``jax.eval_shape`` of its init: nothing compiled), the widening index drawn from ``key``. The
  architecture optimiser's state, the step and the run key are carried unchanged.

  Returns:
    ``(state, masks)``, the state's leaves on this process's first device.
  """
  alphas = jax.device_get(state.alphas)
  if keep_ops is not None:
    alphas, masks = prune_alphas(alphas, keep_ops, op_names, masks)
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), new_model.dtype)
  mixing = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), alphas)
  shapes = jax.eval_shape(lambda x, w: new_model.init(jax.random.key(0), x, w, train=False),
                          x, mixing)
  seed = int(jax.device_get(jax.random.bits(key, (), jnp.uint32)))
  weights, stats, w_opt = widen_state(jax.device_get(state.weights),
                                      jax.device_get(state.batch_stats),
                                      jax.device_get(state.w_opt_state), shapes["params"],
                                      shapes.get("batch_stats", {}), seed)
  device = jax.local_devices()[0]
  put = lambda tree: jax.device_put(tree, device)
  new = state._replace(weights=put(weights), batch_stats=put(stats), w_opt_state=put(w_opt),
                       alphas=put(alphas))
  return new, masks


# --- The run loop's side: which stage, its plan, the boundary -----------------------------------

def keep_mask_option(masks: Optional[dict]):
  """Masks as the hashable, JSON-able relaxation option ``keep_mask`` (nested tuples of bools)."""
  if masks is None:
    return None
  return tuple(sorted((k, tuple(map(tuple, np.asarray(m, bool).tolist())))
                      for k, m in masks.items()))


def load_keep_mask(run_dir):
  """The ``keep_mask`` relaxation option recorded in ``RUN_DIR/stages.json``, or None."""
  path = pathlib.Path(run_dir) / STAGES_FILE
  if not path.is_file():
    return None
  try:
    record = json.loads(path.read_text())
    masks = record["stages"][-1]["masks"]
  except (ValueError, KeyError, IndexError, TypeError) as e:
    raise JaxnasError(f"{path} cannot be read ({e}); the run directory is damaged")
  return None if masks is None else keep_mask_option(masks)


def check_plan(plan) -> None:
  """A one-line JaxnasError if a staged search cannot run (before anything is written).

  Checks the stages (:func:`check_stages`, :func:`stage_starts`), that every stage's supernet can
  be built (e.g. partial channels that divide every cell's channels: DrNAS' K = 6 and 4 need
  ``--channels`` a multiple of 12) from shapes alone, and that no option the stages do not support
  is on (``--save-trajectory``: snapshots of one shape per run).
  """
  from jaxnas import run  # noqa: PLC0415
  if plan.cfg.save_trajectory:
    raise JaxnasError(f"method {plan.recipe.name!r} runs in stages whose supernets differ in "
                      "shape; --save-trajectory is not supported with it: leave it out")
  staged = StagedRun(plan, None)
  for i in range(len(staged.stages)):
    try:
      run.count_params(staged.plan(i).model, plan.dataset.image_shape)
    except JaxnasError as e:
      raise JaxnasError(f"stage {i + 1} of method {plan.recipe.name!r}: {e}") from None


class StagedRun:
  """The stages of one staged search: where each starts, the current one, its masks.

  Used by :func:`jaxnas.run.run_search`: :meth:`plan` and :meth:`arch_start` give the current
  stage's supernet, recipe and first architecture step; :meth:`is_boundary` / :meth:`advance`
  rebuild the state at a stage's first step; :meth:`template`, :meth:`record` and :meth:`restore`
  carry the stage through checkpoints.
  """

  def __init__(self, plan, run_dir):
    recipe = plan.recipe
    self.base = plan
    self.run_dir = None if run_dir is None else pathlib.Path(run_dir)
    self.stages = check_stages(recipe.stages, recipe.space_options)
    self.starts = stage_starts(recipe.stages, plan.total_steps, plan.steps_per_epoch)
    self.warmups = stage_warmups(recipe.stages, self.starts, plan.total_steps)
    self.index = 0
    self.masks = None

  def stage_of(self, step: int) -> int:
    """The stage that runs step ``step`` (0-based)."""
    return int(np.searchsorted(np.asarray(self.starts), step, side="right") - 1)

  def plan(self, index: Optional[int] = None):
    """The run's plan with stage ``index``'s (default: the current) supernet and recipe.

    The supernet has the recipe's space options updated by every stage's up to ``index``; the
    recipe's relaxation gets the current masks as ``keep_mask`` (when a stage pruned).
    """
    from jaxnas import run  # noqa: PLC0415  (run imports this module)
    index = self.index if index is None else index
    base = self.base
    opts = dict(base.recipe.space_options)
    for s in self.stages[:index + 1]:
      opts.update(s["space_options"])
    recipe = base.recipe.replace(space_options=tuple(sorted(opts.items())))
    model, recipe = run.build(base.cfg, base.dataset.num_classes, recipe=recipe)
    if self.masks is not None:
      relax_opts = dict(recipe.relaxation_options)
      relax_opts["keep_mask"] = keep_mask_option(self.masks)
      recipe = recipe.replace(relaxation_options=tuple(sorted(relax_opts.items())))
    return base._replace(model=model, recipe=recipe)

  def arch_start(self) -> int:
    """The first step of the current stage whose architecture update is applied."""
    return self.starts[self.index] + self.warmups[self.index]

  def is_boundary(self, step: int) -> bool:
    """Whether step ``step`` is the first of a stage after the current one."""
    return self.stage_of(step) > self.index and step == self.starts[self.stage_of(step)]

  def advance(self, state):
    """Rebuilds ``state`` into the next stage (:func:`rebuild`); writes ``stages.json``."""
    nxt = self.index + 1
    new_plan = self.plan(nxt)
    key = jax.random.fold_in(jax.random.fold_in(state.key, 0x5354), nxt)
    state, masks = rebuild(state, new_plan.model, keep_ops=self.stages[nxt]["keep_ops"],
                           op_names=new_plan.model.op_names, masks=self.masks, key=key,
                           image_shape=self.base.dataset.image_shape)
    self.index, self.masks = nxt, masks
    self.write()
    return state

  def template(self, steps_done: int, key):
    """A fresh state of the supernet of the stage a state after ``steps_done`` steps is in."""
    from jaxnas import search  # noqa: PLC0415
    index = self.stage_of(max(steps_done - 1, 0))
    plan = self.plan(index)
    return search.init_search_state(plan.model, plan.recipe, key, self.base.dataset.image_shape,
                                    steps_per_epoch=plan.steps_per_epoch, epochs=plan.epochs)

  def record(self) -> dict:
    """What a checkpoint records of the stages: the current stage and its masks."""
    return {"index": self.index,
            "masks": None if self.masks is None else {k: np.asarray(v, bool)
                                                      for k, v in self.masks.items()}}

  def restore(self, position: dict) -> None:
    """The stage and masks a checkpoint's position record holds (:meth:`record`)."""
    rec = position.get("stages") if isinstance(position, dict) else None
    if rec is None:
      raise JaxnasError("the checkpoint has no stage record (written by a run without stages); "
                        "resume it with the configuration that wrote it")
    self.index = int(rec["index"])
    masks = rec["masks"]
    self.masks = None if masks is None else {k: np.asarray(v, bool) for k, v in masks.items()}

  def describe(self, index: Optional[int] = None) -> str:
    """One line on a stage: its steps, its space options, the operations kept, its warm-up."""
    i = self.index if index is None else index
    end = self.starts[i + 1] if i + 1 < len(self.starts) else self.base.total_steps
    s = self.stages[i]
    opts = dict(self.base.recipe.space_options)
    for t in self.stages[:i + 1]:
      opts.update(t["space_options"])
    parts = [f"stage {i + 1}/{len(self.stages)}: steps {self.starts[i] + 1}-{end}"]
    if "partial_channels" in opts:
      parts.append(f"partial_channels {opts['partial_channels']}")
    if s["keep_ops"] is not None:
      parts.append(f"{s['keep_ops']} ops per edge")
    parts.append(f"arch steps from step {self.starts[i] + self.warmups[i] + 1}")
    return ", ".join(parts)

  def write(self) -> None:
    """``RUN_DIR/stages.json``: the stages' start steps and the current masks (for derive).

    Nothing is written for a run without a directory (``run_dir`` None).
    """
    if self.run_dir is None:
      return
    record = {"starts": list(self.starts), "warmups": list(self.warmups), "stages": [
        {"stage": i + 1, "start_step": self.starts[i],
         "masks": None if (i != self.index or self.masks is None) else
         {k: np.asarray(v, bool).tolist() for k, v in self.masks.items()}}
        for i in range(self.index + 1)]}
    path = self.run_dir / STAGES_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record) + "\n")
    partial.replace(path)
