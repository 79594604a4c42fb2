"""The model card: what the build trained on, how well it does, and what is served.

Written next to the reliability plot as ``model_card.md`` (for people) and ``card.json`` (for
tools). Every number comes from the build that wrote it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from ubm_build import data

MODEL_TITLES = {
    "logistic_regression": "Logistic regression (session + popularity features)",
    "lightgbm": "LightGBM (session + popularity features)",
    "bert": "BERT behaviour text + session features (served)",
}


def window_counts(examples: dict[str, list[data.Example]]) -> dict[str, dict]:
    counts = {}
    for name, window in examples.items():
        start, end = data.WINDOWS[name]
        positives = sum(ex.label for ex in window)
        counts[name] = {
            "from": datetime.fromtimestamp(start, data.CHINA).date().isoformat(),
            "to": datetime.fromtimestamp(end - 1, data.CHINA).date().isoformat(),
            "sessions": len(window),
            "positives": positives,
            "positive_rate": round(positives / max(len(window), 1), 4),
        }
    return counts


def _ci(metrics: dict, key: str) -> str:
    low, high = metrics[f"{key}_ci"]
    return f"{metrics[key]:.3f} [{low:.3f}, {high:.3f}]"


@dataclass(frozen=True)
class Card:
    summary: dict
    """`train.train`'s summary: profile, counts, epochs, seconds, test ROC-AUC."""
    windows: dict[str, dict]
    models: dict[str, dict]
    """Model name -> `quality.Metrics.to_dict()` on the test window."""
    variants: list[dict]
    served_variant: str
    build_seconds: float | None = None

    def verdict(self) -> str:
        best_name = max(
            (n for n in self.models if n != "bert"), key=lambda n: self.models[n]["roc_auc"]
        )
        bert, best = self.models["bert"]["roc_auc"], self.models[best_name]["roc_auc"]
        outcome = "reaches" if bert >= best else "does NOT reach"
        return (
            f"The BERT model {outcome} the best baseline's test-window ROC-AUC"
            f" ({bert:.4f} vs {MODEL_TITLES[best_name]} {best:.4f}, difference"
            f" {bert - best:+.4f}; the intervals below show how much of that is noise)."
        )

    def markdown(self) -> str:
        profile = self.summary["profile"]
        lines = [
            f"# Model card: ubm purchase model ({profile['name']} profile)",
            "",
            "Task: from a user's events up to now, predict whether the current session (events",
            "since the last 30-minute pause) ends in a purchase. Data: Taobao UserBehavior",
            "(Alibaba, research use only), sessions split by time, never by random rows.",
            "",
            self.verdict(),
            "",
            "## Data",
            "",
            "| window | days (China time) | sessions | positives | rate |",
            "|---|---|---|---|---|",
        ]
        for name, w in self.windows.items():
            lines.append(
                f"| {name} | {w['from']} .. {w['to']} | {w['sessions']} | {w['positives']}"
                f" | {w['positive_rate']:.1%} |"
            )
        lines += [
            "",
            f"Trained on {self.summary['train_examples']} train-window sessions"
            f" ({self.summary['train_positives']} positive). Calibration and early stopping use",
            "the valid window; every metric below is on the test window only.",
            "",
            "## Test-window metrics",
            "",
            "95% intervals from 1,000 stratified bootstrap resamples. ECE: 15 equal-width bins,",
            "after Platt calibration fitted on the valid window (before it in brackets).",
            "",
            "| model | ROC-AUC | PR-AUC | log loss | ECE (uncalibrated) |",
            "|---|---|---|---|---|",
        ]
        for name, m in self.models.items():
            uncalibrated = m.get("ece_uncalibrated")
            ece = f"{m['ece']:.4f}" + (f" ({uncalibrated:.4f})" if uncalibrated is not None else "")
            lines.append(
                f"| {MODEL_TITLES.get(name, name)} | {_ci(m, 'roc_auc')} | {_ci(m, 'pr_auc')}"
                f" | {m['log_loss']:.4f} | {ece} |"
            )
        lines += [
            "",
            "![reliability](reliability.png)",
            "",
            "## Exported encoder variants (checked against PyTorch on the whole test window)",
            "",
            "| variant | max abs diff of probability | ROC-AUC | change | records/s in-process"
            " | alone vs in a batch | passed |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in self.variants:
            served = " (served)" if v["variant"] == self.served_variant else ""
            lines.append(
                f"| {v['variant']}{served} | {v['probability_max_abs_diff']:.2e}"
                f" | {v['roc_auc']:.4f} | {v['roc_auc_delta']:+.4f}"
                f" | {v['records_per_s']:.0f} | {_batch(v)} | {'yes' if v['passed'] else 'no'} |"
            )
        lines += [
            "",
            "fp32 variants must stay within 1e-4 of PyTorch's probability; int8 may lose at",
            "most 0.005 ROC-AUC. Every variant must score a record alone and inside mixed,",
            "padded batches within 1e-6 (int8-dynamic cannot: its activation scales come from",
            "the whole batch; it is exported for comparison only). The repository serves the",
            "fastest variant that passed.",
            "",
            "## Training",
            "",
            "| setting | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in profile.items()),
            f"| base model | {Path(self.summary.get('base_model', '?')).name} |",
            "| epochs run (valid ROC-AUC) | "
            + ", ".join(f"{e['epoch']}: {e['valid_roc_auc']}" for e in self.summary["epochs"])
            + f"; best {self.summary['best_epoch']} |",
            f"| training time | {self.summary['train_seconds']:.0f} s |",
        ]
        if self.build_seconds is not None:
            lines.append(f"| whole build | {self.build_seconds:.0f} s |")
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "card.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        path = directory / "model_card.md"
        path.write_text(self.markdown())
        return path


def _batch(variant: dict) -> str:
    """Max |p alone - p in a batch| of a variant row, or "-" for a variants.json without it."""
    value = variant.get("batch_max_abs_diff")
    return "-" if value is None else f"{value:.1e}"
