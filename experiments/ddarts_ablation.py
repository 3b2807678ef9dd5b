"""D-DARTS' ablation loss, constant (the authors' code) against differentiable: a short search.

    python experiments/ddarts_ablation.py [OUT_DIR]

Runs ``d-darts`` twice on the embedded digits (darts space, 3 cells, 2 channels, batch 8, 40
steps, seed 0): as registered (``ddarts-ablation``, no gradient) and with the differentiable
``ddarts-ablation-grad`` at the same weight 0.5 in its place. Writes ``ddarts_ablation.json``: the
losses, the logged mean |L_AB|, the final alphas' differences and each run's marginal
contributions at the end (recomputed from the metrics; see jaxnas.ddarts).
"""

import json
import pathlib
import sys

import numpy as np

from jaxnas import methods
from jaxnas.methods import Regularizer
from jaxnas.run import SearchConfig, run_search


def main(out="runs/ddarts-ablation"):
  out = pathlib.Path(out)
  base = methods.get("d-darts")
  variants = {
      "constant": base,
      "differentiable": base.replace(name="d-darts-grad", regularizers=(
          Regularizer("zero-one-cells", 8.0), Regularizer("ddarts-ablation-grad", 0.5))),
  }
  result = {}
  for label, recipe in variants.items():
    cfg = SearchConfig(space="darts", dataset="digits", cells=3, channels=2, batch_size=8,
                       steps=40, seed=0, out=str(out / label))
    run = run_search(cfg, recipe=recipe)
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    reg = [k for k in lines[0] if k.startswith("reg/ddarts-ablation") and "/weight" not in k][0]
    with np.load(run / "alphas.npz") as f:
      alphas = f["cells"]
    summary = json.loads((run / "summary.json").read_text())
    result[label] = {
        "train_loss_first_last": [lines[0]["train_loss"], lines[-1]["train_loss"]],
        "val_loss_first_last": [lines[0]["val_loss"], lines[-1]["val_loss"]],
        "val_loss_mean_last10": float(np.mean([l["val_loss"] for l in lines[-10:]])),
        "mean_abs_L_AB_first_last": [lines[0][reg], lines[-1][reg]],
        "alpha_grad_norm_mean": float(np.mean([l["alpha_grad_norm"] for l in lines])),
        "alphas_mean_per_cell": alphas.mean(axis=(1, 2)).tolist(),
        "alphas_abs_max": float(np.abs(alphas).max()),
        "supernet_val_accuracy": summary["supernet_val_accuracy"],
        "genotype": summary["genotype"], "derivation_error": summary["derivation_error"],
        "first_step_s": summary["first_step_s"], "search_s": summary["search_s"],
    }
    np.save(out / f"{label}_alphas.npy", alphas)
  a = np.load(out / "constant_alphas.npy")
  b = np.load(out / "differentiable_alphas.npy")
  result["alphas_diff"] = {"max_abs": float(np.abs(a - b).max()),
                           "mean_abs_per_cell": np.abs(a - b).mean(axis=(1, 2)).tolist(),
                           "argmax_op_agreement": float(np.mean(a[..., 1:].argmax(-1)
                                                                == b[..., 1:].argmax(-1)))}
  (out / "ddarts_ablation.json").write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main(*sys.argv[1:])
