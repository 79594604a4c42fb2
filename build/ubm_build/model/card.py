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
from ubm_build.model import ablation

MODEL_TITLES = {
    "logistic_regression": "Logistic regression (session + snapshot features)",
    "lightgbm": "LightGBM (session + snapshot features)",
    "bert": "BERT behaviour text + session + snapshot features (served)",
}
ABLATION_TITLES = {
    "logistic_regression": "features only: logistic regression",
    "lightgbm": "features only: LightGBM",
    **ablation.TITLES,
}


TARGET_MARGIN = 0.01
"""The served model should beat the best baseline's ROC-AUC by at least this much."""


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
    ablation: dict[str, dict]
    """Row name -> `quality.Comparison.to_dict()` against `best_baseline`."""
    best_baseline: str
    variants: list[dict]
    served_variant: str
    build_seconds: float | None = None
    segments: dict | None = None
    """The model's ``segments.json`` without the centroids (`steps.fit_segments`)."""
    privacy: dict | None = None
    """`privacy_cost`'s table (``results/privacy.json``): test ROC-AUC of heads fit with
    differential privacy at several ε against the non-private head."""

    def verdict(self) -> str:
        best_name = self.best_baseline
        bert, best = self.models["bert"]["roc_auc"], self.models[best_name]["roc_auc"]
        target = best + TARGET_MARGIN
        outcome = "reaches" if bert >= target else "does NOT reach"
        served = ablation.served_row(self.summary["profile"]["snapshot_words"])
        low, high = self.ablation[served]["difference_ci"]
        return (
            f"The served model {outcome} the target of the best point-in-time baseline"
            f" + {TARGET_MARGIN} ROC-AUC on the test window ({bert:.4f} vs"
            f" {MODEL_TITLES[best_name]} {best:.4f}, difference {bert - best:+.4f}, paired 95%"
            f" interval [{low:+.3f}, {high:+.3f}])."
        )

    def ablation_lines(self) -> list[str]:
        best = ABLATION_TITLES[self.best_baseline]
        lines = [
            "## Ablation: what each part adds",
            "",
            "Every row reads the same point-in-time inputs of the same test sessions. Heads on",
            "text are the served head (scaled features, principal components of the",
            "embedding, logistic regression) fit on fewer inputs, or on the text with the",
            "snapshot's words rendered into it. The difference is against",
            f"the best baseline ({best}), with a paired bootstrap interval: each of the 1,000",
            "resamples scores both models on the same sessions.",
            "",
            "| model | ROC-AUC [95%] | difference [paired 95%] |",
            "|---|---|---|",
        ]
        served = ablation.served_row(self.summary["profile"]["snapshot_words"])
        for name, row in self.ablation.items():
            low, high = row["roc_auc_ci"]
            d_low, d_high = row["difference_ci"]
            title = ABLATION_TITLES.get(name, name) + (" **(served)**" if name == served else "")
            lines.append(
                f"| {title} | {row['roc_auc']:.3f} [{low:.3f},"
                f" {high:.3f}] | {row['difference']:+.4f} [{d_low:+.3f}, {d_high:+.3f}] |"
            )
        return [*lines, ""]

    def segment_lines(self) -> list[str]:
        if self.segments is None:
            return []
        lines = [
            "## Segments",
            "",
            f"k-means on the train window's embeddings (the head's principal components):"
            f" k = {self.segments['k']}, the {self.segments['criterion']}. The centroids are"
            " part of the served head: the ensemble returns each user's `segment` and"
            " `segment_distance`.",
            "",
            "| segment | sessions | share | purchase rate | view / cart / fav / buy"
            " | median session events | top categories |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in self.segments["profiles"]:
            mix = " / ".join(f"{p['event_mix'][t]:.0%}" for t in ("view", "cart", "fav", "buy"))
            lines.append(
                f"| {p['segment']} | {p['size']} | {p['share']:.0%} | {p['purchase_rate']:.1%}"
                f" | {mix} | {p['median_session_events']:g} | {', '.join(p['top_categories'])} |"
            )
        return [*lines, "", "![segments](segments.png)", ""]

    def privacy_lines(self) -> list[str]:
        """The DP record of a private head, and `privacy`'s cost table; none if neither."""
        record = self.summary.get("privacy")
        if record is None and self.privacy is None:
            return []
        lines = ["## Privacy", ""]
        if record is None:
            lines += ["The served head is trained without differential privacy.", ""]
        else:
            lines += [
                "The served head's linear layer is trained with DP-SGD (Opacus), private per"
                " **user**:",
                f"(ε = {record['epsilon_spent']:.3f} of target {record['epsilon']},"
                f" δ = {record['delta']:.2g}), {record['accountant'].upper()} accountant, noise"
                f" multiplier {record['noise_multiplier']:.3f}, per-user gradient clipped to"
                f" L2 norm {record['max_grad_norm']}, sample rate {record['sample_rate']:.4f},"
                f" {record['epochs']} epochs = {record['steps']} steps over"
                f" {record['users']} users ({record['sessions']} sessions). Each step samples"
                f" users; a sampled user's gradient is the {record['user_gradient']}.",
                "",
                "Covered by ε: the head's weights, against adding or removing all of one"
                " training user's sessions. Data-independent: the feature scaling (fixed"
                " a-priori ranges), the projection of the embedding (seeded random"
                " orthonormal, no PCA), no calibration (probabilities are **uncalibrated**;"
                " ROC-AUC is unaffected). Not covered: the served snapshot's item and category"
                " counts (aggregates over all users' events), hyperparameters chosen on the"
                " valid window, and the other sections of this card (baselines, ablation)."
                " Segments are not fitted (k-means is not private): every user is in"
                " segment 0.",
                "",
            ]
        if self.privacy is not None:
            seeds = len(self.privacy.get("seeds", [])) or 1
            lines += [
                f"Cost of privacy on the test window (`{self.privacy['command']}`): the same",
                "embeddings, each head fit on the train window; δ ="
                f" {self.privacy['delta']:.2g}; differences paired against the non-private"
                " head (1,000 shared resamples). DP-SGD is random: the last column is the"
                f" range of ROC-AUC over {seeds} seeds (noise, sampling, projection).",
                "",
                "| head | ε | noise multiplier | clip | ROC-AUC [95%] | difference [paired 95%]"
                " | seeds: min .. max |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in self.privacy["rows"]:
                low, high = row["roc_auc_ci"]
                eps = "∞" if row["epsilon"] is None else f"{row['epsilon']:g}"
                noise = row.get("noise_multiplier")
                spread = row.get("seed_roc_aucs")
                spread = f"{min(spread):.3f} .. {max(spread):.3f}" if spread else "-"
                lines.append(
                    f"| {row['title']} | {eps} | {'-' if noise is None else f'{noise:.3f}'}"
                    f" | {row.get('max_grad_norm') or '-'} | {row['roc_auc']:.3f} [{low:.3f},"
                    f" {high:.3f}] | {_difference(row)} | {spread} |"
                )
            lines.append("")
        return lines

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
            f" ({self.summary['train_positives']} positive). Calibration uses the valid window;",
            "every metric below is on the test window only. Item and category features are",
            "point-in-time: each session reads the snapshot of its own day (events strictly",
            "before midnight, China time), the served model the snapshot as of the test day.",
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
            *self.ablation_lines(),
            "## Exported encoder variants (checked against PyTorch on the whole test window)",
            "",
            "| variant | max abs diff of probability | ROC-AUC | change | records/s in-process"
            " | alone vs in a batch | segment as PyTorch's | passed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in self.variants:
            served = " (served)" if v["variant"] == self.served_variant else ""
            lines.append(
                f"| {v['variant']}{served} | {v['probability_max_abs_diff']:.2e}"
                f" | {v['roc_auc']:.4f} | {v['roc_auc_delta']:+.4f}"
                f" | {v['records_per_s']:.0f} | {_batch(v)} | {_agreement(v)}"
                f" | {'yes' if v['passed'] else 'no'} |"
            )
        lines += [
            "",
            "fp32 variants must stay within 1e-4 of PyTorch's probability; int8 and bf16",
            "variants may lose at most 0.005 ROC-AUC. Every variant must score a record alone",
            "and inside mixed, padded batches within 1e-6 (int8-dynamic cannot: its activation",
            "scales come from the whole batch; it is exported for comparison only). The",
            "repository serves the fastest variant that passed (records/s: one run of the",
            "export; `make bench` compares them in alternating rounds). The segment column is",
            "reported, not a gate: a record near the border of two segments may cross it.",
            "",
            *self.segment_lines(),
            *self.privacy_lines(),
            "## Training",
            "",
            "| setting | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in profile.items()),
            f"| base model | {'/'.join(Path(self.summary.get('base_model', '?')).parts[-2:])} |",
            f"| masked-LM pretraining | {_pretraining(self.summary.get('pretraining'))} |",
            f"| valid ROC-AUC (uncalibrated head) | {self.summary['valid_roc_auc']:.4f} |",
            f"| reading and embedding the windows | {self.summary['embedding_seconds']:.0f} s |",
            "| training time (pretraining, embedding, head) |"
            f" {self.summary['train_seconds']:.0f} s |",
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


def _pretraining(summary: dict | None) -> str:
    if summary is None:
        return "none (the base encoder)"
    return (
        f"{summary['epochs']} epoch on {summary['texts']} train-window texts,"
        f" loss {summary['first_loss']} -> {summary['last_loss']}, {summary['seconds']:.0f} s"
    )


def _difference(row: dict) -> str:
    """A privacy row's paired difference and interval; "-" for the reference row itself."""
    low, high = row["difference_ci"]
    if row["difference"] == 0 and low == high == 0:
        return "-"
    return f"{row['difference']:+.4f} [{low:+.3f}, {high:+.3f}]"


def _agreement(variant: dict) -> str:
    """The share of records a variant puts in PyTorch's segment, or "-" if not measured."""
    value = variant.get("segment_agreement")
    return "-" if value is None else f"{value:.2%}"


def _batch(variant: dict) -> str:
    """Max |p alone - p in a batch| of a variant row, or "-" for a variants.json without it."""
    value = variant.get("batch_max_abs_diff")
    return "-" if value is None else f"{value:.1e}"
