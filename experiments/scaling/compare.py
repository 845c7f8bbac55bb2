"""Compute-optimal fits of several scaling studies side by side: compare.md (a table of
every method's a, b and tokens per parameter at 1e14 FLOPs with 95% intervals, and each
interval's width over the first study's) and compare.png (the intervals).

  python experiments/scaling/compare.py --output DIR "label=STUDY_DIR" "label=STUDY_DIR" ...

Each STUDY_DIR holds fit_isoflop.json, fit_parametric.json and fit_envelope.json
(experiments/scaling/fit.sh writes them).
"""

import argparse
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("isoflop", "parametric", "envelope")
QUANTITIES = (("parameters", "a", "a (N_opt ∝ C^a)"), ("parameters", "b", "b (D_opt ∝ C^b)"),
              ("optimal", "tokens_per_param", "tokens per parameter at 1e14 FLOPs"))
COLORS = ("tab:gray", "tab:blue", "tab:orange", "tab:green")


def cell(entry: dict) -> str:
  low, high = entry["ci95"]
  return f"{entry['value']:.3g} [{low:.3g}, {high:.3g}]"


def width(entry: dict, name: str) -> float:
  # tokens per parameter spans orders of magnitude: its intervals compare in log space
  low, high = entry["ci95"]
  return math.log(high / low) if name == "tokens_per_param" else high - low


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", required=True, help="folder for compare.md / compare.png")
  parser.add_argument("studies", nargs="+", help="label=STUDY_DIR, the first the baseline")
  args = parser.parse_args()
  studies = dict(study.split("=", 1) for study in args.studies)
  fits = {label: {m: json.load(open(f"{folder}/fit_{m}.json")) for m in METHODS}
          for label, folder in studies.items()}
  labels = list(studies)
  # the last columns: each later study's interval width over the first study's (log width
  # for tokens per parameter); below 1 means narrower
  ratios = [f"width / first ({label.split(' (')[0]})" for label in labels[1:]]
  lines = ["| method | quantity | " + " | ".join(labels + ratios) + " |",
           "|---|---|" + "---|" * (len(labels) + len(ratios))]
  for method in METHODS:
    for part, name, label in QUANTITIES:
      entries = [fits[study][method][part][name] for study in labels]
      widths = [width(entry, name) for entry in entries]
      lines.append(f"| {method} | {label} | " + " | ".join(cell(e) for e in entries) + " | "
                   + " | ".join(f"{w / widths[0]:.2f}" for w in widths[1:]) + " |")
  with open(f"{args.output}/compare.md", "w") as handle:
    handle.write("\n".join(lines) + "\n")
  print("\n".join(lines))

  figure, axes = plt.subplots(1, len(QUANTITIES), figsize=(13, 3.2 + 0.4 * len(labels)))
  spacing = 0.6 / max(len(labels), 1)
  for axis, (part, name, label) in zip(axes, QUANTITIES):
    for offset, (study, color) in enumerate(zip(labels, COLORS)):
      for row, method in enumerate(METHODS):
        entry = fits[study][method][part][name]
        low, high = entry["ci95"]
        y = row + spacing * (offset - (len(labels) - 1) / 2)
        axis.plot([low, high], [y, y], color=color, lw=2)
        axis.plot(entry["value"], y, "o", color=color, label=study if row == 0 else None)
    axis.set_yticks(range(len(METHODS)), METHODS)
    axis.set_title(label)
    if name == "tokens_per_param":
      axis.set_xscale("log")
      axis.axvline(20, color="k", ls=":", lw=1)
    else:
      axis.axvline(0.5, color="k", ls=":", lw=1)
  figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center",
                ncol=min(len(labels), 3))
  figure.suptitle("Compute-optimal scaling, 95% bootstrap intervals (dotted: Chinchilla)")
  figure.tight_layout(rect=(0, 0.1 + 0.02 * len(labels), 1, 1))
  figure.savefig(f"{args.output}/compare.png", dpi=120)


if __name__ == "__main__":
  main()
