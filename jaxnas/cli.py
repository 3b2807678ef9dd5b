"""The ``jaxnas`` command: a thin layer over the library (DESIGN §6).

    jaxnas search  [--space darts|nb201] [--method NAME] [--estimator NAME] [--dataset NAME] ...
    jaxnas derive  RUN_DIR [--rule NAME]
    jaxnas study   hypergrad [--problem ridge|logistic|toy|supernet | --run RUN_DIR] [--out DIR]
    jaxnas plot    RUN_DIR
    jaxnas train   --genotype FILE|RUN_DIR|NAME [--dataset NAME] [--epochs N] ... [--dry-run]
    jaxnas methods

Bad input ends with one line on stderr (``jaxnas: error: ...``) and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import sys

from jaxnas.errors import JaxnasError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
  """argparse, but its usage errors are one line that points at --help."""

  def error(self, message):
    raise JaxnasError(f"{message} (see '{self.prog} --help')")


def _int(text: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")


def _float(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="jaxnas", description="Differentiable architecture search in JAX.")
  sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

  s = sub.add_parser("search", help="search an architecture (the quick start with no arguments)",
                     description="Run a DARTS-family search and write a run directory.")
  s.add_argument("--space", default="nb201", help="search space: nb201 (default) or darts")
  s.add_argument("--method", default="darts-1st", help="recipe name (see 'jaxnas methods')")
  s.add_argument("--estimator", default=None,
                 help="hypergradient estimator replacing the recipe's (e.g. unrolled_hvp)")
  s.add_argument("--dataset", default="digits", help="data set (default: the embedded digits)")
  s.add_argument("--data-dir", default=None, help="where the data set's files are")
  g = s.add_mutually_exclusive_group()
  g.add_argument("--epochs", type=_int, default=None, help="search epochs (default 30)")
  g.add_argument("--steps", type=_int, default=None, help="search steps instead of epochs")
  s.add_argument("--batch-size", type=_int, default=64)
  s.add_argument("--channels", type=_int, default=None,
                 help="initial channels C (default: 8 for nb201, 16 for darts)")
  s.add_argument("--cells", type=_int, default=None,
                 help="cells per stage for nb201 (default 1), cells L for darts (default 8)")
  s.add_argument("--seed", type=_int, default=0)
  s.add_argument("--out", default=None, help="run directory (default: runs/<method>-...-<time>)")
  s.add_argument("--log-every", type=_int, default=1, help="steps between metrics.jsonl lines")
  s.add_argument("--depthwise", default="lax", help="depthwise conv form for darts: lax (default), taps or vjp")
  s.add_argument("--cell-sharing", default=None, choices=["type", "none"],
                 help="darts: one alphas per cell type (type, DARTS) or per cell (none, D-DARTS); "
                      "default: the method's")
  s.add_argument("--init-genotype", default=None, metavar="NET",
                 help="DARTOpti (--method dartopti): start from a hand-made network, resnet18 or "
                      "resnet50 (its cells, reductions and alphas; identical cells share alphas)")
  s.add_argument("--remat", default="none",
                 help="rematerialisation (jax.checkpoint): none (default), cell (every cell) or "
                      "op (every group of mixed ops): less memory, more compute, same numbers")
  s.add_argument("--fuse-phases", default="auto", choices=["auto", "on", "off"],
                 help="first-order step as one forward+backward run twice (on: compiles in about "
                      "a third of the time, steps slower) or two copies (off: faster steps); "
                      "auto (default): on for the darts space, off for nb201")
  pieces = s.add_argument_group(
      "pieces", "compose a method: any recipe takes another estimator, perturbation, stopping rule "
      "or extra regularisers")
  pieces.add_argument("--estimator-option", action="append", default=[], metavar="KEY=VALUE",
                      help="set an estimator option, e.g. unroll_steps=5 (repeatable)")
  pieces.add_argument("--add-regularizer", action="append", default=[],
                      metavar="NAME:WEIGHT[:SCHEDULE]",
                      help="add a regulariser on alphas, e.g. beta-decay:50:linear (repeatable; "
                           "replaces the weight of the recipe's own of that name)")
  pieces.add_argument("--perturbation", default=None,
                      help="perturbation of the mixing weights for the weight step "
                           "(random-smoothing, pgd; 'none' removes the recipe's)")
  pieces.add_argument("--stopping", default=None,
                      help="stopping rule evaluated at each epoch end ('none' removes the "
                           "recipe's)")
  pieces.add_argument("--eigen-every", type=_int, default=0, metavar="N",
                      help="log the dominant Hessian eigenvalue of the val loss in alphas every N "
                           "steps (0: only when the stopping rule needs it)")
  s.add_argument("--save-trajectory", type=_int, default=0, metavar="N",
                 help="save weights and alphas every N steps for 'jaxnas study hypergrad --run'")
  scale = s.add_argument_group("scale", "several seeds in one program, several devices, several "
                               "processes (hosts)")
  scale.add_argument("--seeds", type=_int, default=None, metavar="N",
                     help="search seeds SEED..SEED+N-1 as one vmapped program: one run directory "
                          "per seed and a summary")
  scale.add_argument("--devices", type=_int, default=None, metavar="N",
                     help="split each batch over N local devices (default: all)")
  scale.add_argument("--dtype", default="float32",
                     help="activations' dtype: float32 (default) or bfloat16 (float32 master "
                          "weights and statistics)")
  scale.add_argument("--coordinator", default=None, metavar="ADDR:PORT",
                     help="several processes (hosts): process 0's address and a free port; give "
                          "every process the same, with --num-processes and --process-id")
  scale.add_argument("--num-processes", type=_int, default=None, metavar="N",
                     help="several processes: how many take part")
  scale.add_argument("--process-id", type=_int, default=None, metavar="I",
                     help="several processes: this one's id, 0..N-1 (process 0 writes the run "
                          "directory)")
  scale.add_argument("--distributed", default=None, choices=["auto"],
                     help="auto: let jax.distributed.initialize() find the processes (SLURM, "
                          "Open MPI, Cloud TPU pods)")
  s.add_argument("--dry-run", action="store_true",
                 help="build the supernet, write config.json (with num_params) and stop")
  ck = s.add_argument_group("checkpoints", "RUN_DIR/checkpoints: the whole search state, atomic")
  ck.add_argument("--checkpoint-every", type=_int, default=None, metavar="N",
                  help="steps between checkpoints (default: each epoch; 0: only at the end)")
  ck.add_argument("--keep", type=_int, default=3, metavar="K",
                  help="keep the newest K checkpoints (default 3)")
  ck.add_argument("--resume", action="store_true",
                  help="continue the run in --out RUN_DIR from its newest checkpoint, with the "
                       "configuration of its config.json (other flags must agree with it); the "
                       "output of --seeds N continues all its seeds")
  s.add_argument("--no-compile-cache", action="store_true",
                 help="do not use the persistent XLA compilation cache")

  d = sub.add_parser("derive", help="derive a genotype from a run directory's alphas",
                     description="Derive a genotype from RUN_DIR/alphas.npz.")
  d.add_argument("run_dir", metavar="RUN_DIR")
  d.add_argument("--rule", default=None, help="derivation rule (default: the run's rule)")
  d.add_argument("--cells", type=_int, default=None, metavar="N",
                 help="per-cell runs (d-darts): write an N-cell genotype by D-DARTS' Algorithm 1 "
                      "(genotype-Ncells.json)")

  st = sub.add_parser("study", help="study hypergradient estimators",
                      description="Compare every hypergradient estimator with the exact one.")
  st.add_argument("what", choices=["hypergrad"], metavar="hypergrad")
  st.add_argument("--problem", default="ridge",
                  help="ridge (default), logistic, toy or supernet (a real NB201 supernet)")
  st.add_argument("--run", default=None, metavar="RUN_DIR",
                  help="instead of a problem: compare the estimators along a search's trajectory "
                       "(a run made with --save-trajectory N)")
  st.add_argument("--out", default=None, help="output directory (default: runs/study-PROBLEM)")
  st.add_argument("--seed", type=_int, default=0)

  pl = sub.add_parser("plot", help="draw a run's mixing weights, cells and curves",
                      description="Draw RUN_DIR's mixing weights over the search, the derived "
                                  "cells and the loss/accuracy curves into RUN_DIR/plots/.")
  pl.add_argument("run_dir", metavar="RUN_DIR")

  tr = sub.add_parser("train", help="train a genotype from scratch (the evaluation phase)",
                      description="Build a genotype's evaluation network (NetworkCIFAR for darts "
                                  "genotypes, NAS-Bench-201's TinyNetwork for nb201 ones) and "
                                  "train it; unset options take the paper's defaults for 32x32 "
                                  "data and smaller ones for the 8x8 digits.")
  tr.add_argument("--genotype", default=None, metavar="FILE|RUN_DIR|NAME",
                  help="a genotype.json, a search run directory, or a published name "
                       "(DARTS_V2, PC_DARTS, PDARTS, ...); required unless --resume")
  tr.add_argument("--dataset", default="digits", help="data set (default: the embedded digits)")
  tr.add_argument("--data-dir", default=None, help="where the data set's files are")
  tr.add_argument("--epochs", type=_int, default=None, help="epochs (600 darts / 200 nb201)")
  tr.add_argument("--batch-size", type=_int, default=None, help="batch size (96 darts / 256 nb201)")
  tr.add_argument("--channels", type=_int, default=None, help="initial channels C (36 / 16)")
  tr.add_argument("--cells", type=_int, default=None,
                  help="cells L for darts (20), cells per stage N for nb201 (5)")
  tr.add_argument("--auxiliary-weight", type=_float, default=None,
                  help="weight of the auxiliary head's loss (0.4 on 32x32 data; 0 turns it off)")
  tr.add_argument("--drop-path", type=_float, default=None,
                  help="final drop-path probability, ramped linearly over epochs (0.2 darts)")
  tr.add_argument("--cutout", type=_int, default=None,
                  help="cutout square side (16 on 32x32 data; 0 turns it off)")
  tr.add_argument("--lr", type=_float, default=None, help="initial learning rate (0.025 / 0.1)")
  tr.add_argument("--seed", type=_int, default=0)
  tr.add_argument("--out", default=None, help="run directory (default: runs/train-...-<time>)")
  tr.add_argument("--log-every", type=_int, default=50, help="steps between metrics.jsonl lines")
  tr.add_argument("--dry-run", action="store_true",
                  help="build the network, print parameter counts and mult-adds, write "
                       "config.json and stop")
  tck = tr.add_argument_group("checkpoints", "RUN_DIR/checkpoints: the whole train state, atomic")
  tck.add_argument("--checkpoint-every", type=_int, default=None, metavar="N",
                   help="steps between checkpoints (default: each epoch; 0: only at the end)")
  tck.add_argument("--keep", type=_int, default=3, metavar="K",
                   help="keep the newest K checkpoints (default 3)")
  tck.add_argument("--resume", action="store_true",
                   help="continue the run in --out RUN_DIR from its newest checkpoint, with the "
                        "configuration of its config.json (other flags must agree with it)")
  tr.add_argument("--no-compile-cache", action="store_true",
                  help="do not use the persistent XLA compilation cache")

  sub.add_parser("methods", help="list the method recipes", description="List the recipes.")
  return p


@contextlib.contextmanager
def _compile_cache(enabled: bool):
  """XLA's persistent cache for the duration of a command (``~/.cache/jaxnas/xla``).

  A repeated configuration then skips compilation (measured: the quick start's first step fell
  from 23 s to 4 s on a 2-core CPU). ``JAXNAS_CACHE_DIR`` moves the cache. The previous settings
  are restored afterwards, so calling :func:`main` in-process leaves JAX's config as it was.
  """
  if not enabled:
    yield
    return
  import jax
  cache = os.environ.get("JAXNAS_CACHE_DIR",
                         os.path.join(os.path.expanduser("~"), ".cache", "jaxnas", "xla"))
  try:
    os.makedirs(cache, exist_ok=True)
  except OSError:
    yield
    return
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], cache)
  jax.config.update(names[1], 1.0)
  try:
    yield
  finally:
    for n, v in saved.items():
      jax.config.update(n, v)


_TRITON_GEMM_FLAG = "--xla_gpu_enable_triton_gemm=false"


def _xla_gpu_workaround(space: str) -> None:
  """Turns XLA:GPU's Triton GEMM fusion off for the DARTS space, unless XLA_FLAGS says otherwise.

  On an H200 with jax 0.11.2, compiling the DARTS supernet's step aborted the process inside
  XLA's ``GemmFusion`` pass (``triton_tiling_propagation.cc: Check failed:
  subdim_size_accumulator == dim_size``); with this flag it compiles and runs. The flag is
  ignored on CPU. It must be set before JAX starts its backend, hence here and not in the library.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if space == "darts" and "xla_gpu_enable_triton_gemm" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + _TRITON_GEMM_FLAG).strip()


def _search_config(args):
  from jaxnas.run import SearchConfig
  return SearchConfig(space=args.space, method=args.method, estimator=args.estimator,
                     dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                     steps=args.steps, batch_size=args.batch_size, channels=args.channels,
                     cells=args.cells, seed=args.seed, out=args.out, log_every=args.log_every,
                     dry_run=args.dry_run, depthwise=args.depthwise, remat=args.remat,
                     fuse_phases=args.fuse_phases,
                     cell_sharing=args.cell_sharing, init_genotype=args.init_genotype,
                     add_regularizers=tuple(args.add_regularizer),
                     estimator_options=tuple(args.estimator_option),
                     perturbation=args.perturbation, stopping=args.stopping,
                     eigen_every=args.eigen_every, save_trajectory=args.save_trajectory,
                     devices=args.devices, dtype=args.dtype,
                     checkpoint_every=args.checkpoint_every,
                     keep=args.keep)


def _join_processes(args) -> None:
  """Joins a multi-process run if the flags ask for one, before anything touches a device.

  ``jax.distributed.initialize`` must run before JAX starts its backends; combinations that
  cannot work (an incomplete set of flags, --seeds or --resume with several processes) are refused
  first, so that no process waits for a coordinator that will not come.
  """
  from jaxnas import parallel
  options = parallel.distributed_options(args.coordinator, args.num_processes, args.process_id,
                                         args.distributed)
  if options is None:
    return
  if (options.get("num_processes") or 0) > 1:
    for flag, given in (("--seeds", args.seeds is not None), ("--resume", args.resume),
                        ("--save-trajectory", args.save_trajectory)):
      if given:
        raise JaxnasError(f"{flag} runs in one process; leave it out of a run with "
                          "--num-processes > 1")
  parallel.initialize(**options)  # connects the processes; the backends start later


def _search(args) -> int:
  from jaxnas import run
  cfg = _search_config(args)
  _join_processes(args)
  if args.resume:
    if args.out is None:
      raise JaxnasError("--resume needs --out RUN_DIR: the run directory to continue")
    from jaxnas import seeds
    num_seeds = None
    if seeds.seeds_of(args.out) is not None:  # a --seeds run: all its seeds continue
      resumed, recipe, num_seeds = seeds.resume_config(args.out)
      if args.seeds is not None and args.seeds != num_seeds:
        raise JaxnasError(f"--seeds {args.seeds} conflicts with the run's {num_seeds} seeds; "
                          "--resume continues all of them: leave --seeds out")
    elif args.seeds is not None:
      raise JaxnasError(f"{args.out} holds one search, not a --seeds run; leave --seeds out")
    else:
      resumed, recipe = run.resume_config(args.out)
    defaults = build_parser().parse_args(["search"])
    run.check_resume_flags(resumed, cfg, _search_config(defaults))
    cfg = dataclasses.replace(  # --checkpoint-every and --keep may change; else the run's values
        resumed, checkpoint_every=(resumed.checkpoint_every if args.checkpoint_every is None
                                   else args.checkpoint_every),
        keep=resumed.keep if args.keep == defaults.keep else args.keep,
        fuse_phases=resumed.fuse_phases if args.fuse_phases == "auto" else args.fuse_phases)
    _xla_gpu_workaround(cfg.space)
    with _compile_cache(not args.no_compile_cache):
      if num_seeds is not None:
        seeds.run_seeds(cfg, num_seeds, recipe=recipe, resume=True)
      else:
        run.run_search(cfg, recipe=recipe, resume=True)
    return 0
  _xla_gpu_workaround(args.space)
  with _compile_cache(not args.no_compile_cache and not args.dry_run):
    if args.seeds is not None:
      from jaxnas import methods
      if methods.get(cfg.method).stages:
        raise JaxnasError(f"method {cfg.method!r} runs in stages, one search at a time; leave "
                          "--seeds out")
      from jaxnas.seeds import run_seeds
      run_seeds(cfg, args.seeds)
    else:
      run.run_search(cfg)
  return 0


def _derive(args) -> int:
  import numpy as np
  from jaxnas import derive, methods, search
  run_dir = pathlib.Path(args.run_dir)
  cfg_path, alphas_path = run_dir / "config.json", run_dir / "alphas.npz"
  for path in (cfg_path, alphas_path):
    if not path.is_file():
      raise JaxnasError(f"{path} not found; RUN_DIR must be a finished 'jaxnas search' run "
                        "directory")
  try:
    config = json.loads(cfg_path.read_text())
    space = config["config"]["space"]
    recipe = methods.Recipe(**{k: v for k, v in config["recipe"].items()
                               if k in ("name", "description", "relaxation", "derivation")})
    relax_opts = tuple((k, tuple(v) if isinstance(v, list) else v)
                       for k, v in config["recipe"].get("relaxation_options") or [])
    recipe = recipe.replace(relaxation_options=relax_opts)
  except (ValueError, KeyError, TypeError) as e:
    raise JaxnasError(f"{cfg_path} is not a jaxnas config.json ({e}); pass a run directory "
                      "written by 'jaxnas search'")
  from jaxnas import progressive
  keep_mask = progressive.load_keep_mask(run_dir)
  if keep_mask is not None:  # a staged search (DrNAS): its last stage's operations per edge
    recipe = recipe.replace(relaxation_options=relax_opts + (("keep_mask", keep_mask),))
  try:
    with np.load(alphas_path) as f:
      alphas = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise JaxnasError(f"{alphas_path} cannot be read ({e}); the run directory is damaged")
  from jaxnas import spaces
  # The recipe's space options that shape the alphas (PC-DARTS' edge normalisation).
  shape_opts = {k: v for k, v in config["recipe"].get("space_options") or []
                if k in ("edge_normalization", "cell_sharing", "op_set")}
  # Per-cell alphas (D-DARTS) have one row per cell: the run's cell count and --cell-sharing.
  shape_opts.update({k: v for k, v in (config.get("space_config") or {}).items()
                     if k in ("num_cells", "cell_sharing", "init_genotype")})
  model = spaces.get(space, **shape_opts)
  spaces.check_weights(alphas, model.alpha_shapes(), space)
  import jax.numpy as jnp
  mixing = search.make_relaxation(recipe, model.op_names)(
      {k: jnp.asarray(v) for k, v in alphas.items()}, None)
  rule = args.rule or recipe.derivation or model.default_rule
  genotype = derive.derive(rule, {k: np.asarray(v) for k, v in mixing.items()}, model.op_names)
  from jaxnas import ddarts
  genotype = ddarts.network_genotype(model, genotype)  # DARTOpti: every position, its reductions
  default_rule = recipe.derivation or model.default_rule
  out = run_dir / ("genotype.json" if rule == default_rule else f"genotype-{rule}.json")
  if args.cells is not None:  # D-DARTS' Algorithm 1: an n-cell network from the searched cells
    genotype = ddarts.deepen(genotype, args.cells)
    out = out.with_name(f"{out.stem}-{args.cells}cells.json")
  out.write_text(genotype.to_json() + "\n")
  print(f"genotype ({rule}): {genotype}")
  if genotype.space == "nb201":
    print(f"NAS-Bench-201 architecture: {derive.nb201_arch_string(genotype)}")
  print(f"written to {out}")
  return 0


def _study(args) -> int:
  if args.run is not None:
    from jaxnas import trajectory
    run_dir = pathlib.Path(args.run)
    out = pathlib.Path(args.out or run_dir / "study-trajectory")
    if out.exists() and any(out.iterdir()):
      raise JaxnasError(f"{out} already exists and is not empty; choose another --out")
    result = trajectory.trajectory_study(run_dir, out)
    print(f"{len(result['runs'])} estimator evaluations at {len(result['snapshots'])} snapshots "
          f"of {run_dir}; written {out / 'trajectory.md'} and {out / 'trajectory.png'}")
    return 0
  from jaxnas import study
  if args.problem not in study.PROBLEMS:
    raise JaxnasError(f"unknown problem {args.problem!r}; choose one of: "
                      + ", ".join(sorted(study.PROBLEMS)) + " (--problem)")
  out = pathlib.Path(args.out or f"runs/study-{args.problem}")
  if out.exists() and any(out.iterdir()):
    raise JaxnasError(f"{out} already exists and is not empty; choose another --out")
  result = study.hypergrad_study(args.problem, str(out), seed=args.seed)
  print(f"{len(result['runs'])} estimator settings compared with dense_ift on {args.problem}; "
        f"written {out / 'study.md'}, {out / 'study.csv'} and {out / 'study.png'}")
  return 0


def _plot(args) -> int:
  from jaxnas import plots
  plots.plot_run(args.run_dir)
  return 0


def _train_config(args):
  from jaxnas.train import TrainConfig
  return TrainConfig(genotype=args.genotype, dataset=args.dataset, data_dir=args.data_dir,
                     epochs=args.epochs, batch_size=args.batch_size, channels=args.channels,
                     cells=args.cells, auxiliary_weight=args.auxiliary_weight,
                     drop_path=args.drop_path, cutout=args.cutout, lr=args.lr, seed=args.seed,
                     out=args.out, log_every=args.log_every, dry_run=args.dry_run,
                     checkpoint_every=args.checkpoint_every, keep=args.keep)


def _train(args) -> int:
  _xla_gpu_workaround("darts")  # the evaluation cells hold the same depthwise/1x1 convs
  from jaxnas import train
  cfg = _train_config(args)
  if args.resume:
    if args.out is None:
      raise JaxnasError("--resume needs --out RUN_DIR: the run directory to continue")
    resumed = train.resume_config(args.out)
    defaults = build_parser().parse_args(["train"])
    train.check_resume_flags(resumed, cfg, _train_config(defaults))
    cfg = dataclasses.replace(  # --checkpoint-every and --keep may change; else the run's values
        resumed, checkpoint_every=(resumed.checkpoint_every if args.checkpoint_every is None
                                   else args.checkpoint_every),
        keep=resumed.keep if args.keep == defaults.keep else args.keep)
    with _compile_cache(not args.no_compile_cache):
      train.run_train(cfg, resume=True)
    return 0
  if args.genotype is None:
    raise JaxnasError("train needs --genotype FILE|RUN_DIR|NAME (or --resume --out RUN_DIR)")
  with _compile_cache(not args.no_compile_cache and not args.dry_run):
    train.run_train(cfg)
  return 0


def _methods(args) -> int:
  del args
  from jaxnas import methods
  width = max(len(n) for n in methods.METHODS)
  for name, recipe in sorted(methods.METHODS.items()):
    print(f"{name:<{width}}  {recipe.description}")
    if recipe.paper:
      print(f"{'':<{width}}  paper: {recipe.paper}")
  return 0


def main(argv=None) -> int:
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
    if args.command is None:
      parser.print_help()
      return 0
    return {"search": _search, "derive": _derive, "study": _study, "plot": _plot,
            "train": _train, "methods": _methods}[args.command](args)
  except JaxnasError as e:
    print(f"jaxnas: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("jaxnas: interrupted; files already written are kept", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
