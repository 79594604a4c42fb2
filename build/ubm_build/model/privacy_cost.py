"""What differential privacy costs in test ROC-AUC: ``python -m ubm_build.model.privacy_cost``.

The profile's windows are read point-in-time and embedded once, then heads are fit on the
train window:

* ``non_private``: the head as `train.train` fits it (standardised features, PCA, logistic
  regression); every difference is against it;
* ``fixed_transforms``: the same logistic regression, not private, on the DP head's
  data-independent transforms (fixed feature scaling, random projection): what giving up the
  learnt transforms costs, apart from the noise;
* ``dp_eps<ε>``: DP-SGD heads (`privacy.fit_private`), private per user, at each ε and the same
  δ (a sampled user's gradient: the mean over their sessions). DP-SGD is random: the row is the
  profile's seed (what ``ubm-build train --dp-epsilon`` would serve), and ``seed_roc_aucs`` the
  spread over further seeds (noise, sampling and random projection);
* ``dp_eps<ε>_one_session``: the same with one random session per sampled user per step (the
  alternative design), at ``--one-session-epsilons``.

Each row's test ROC-AUC has its stratified bootstrap interval (`quality.evaluate`) and its
difference paired against ``non_private`` (`quality.compare`). Rows score uncalibrated logits:
ROC-AUC does not need calibration. The DP settings (`privacy.DPConfig`) were chosen on the
valid window, whose ROC-AUC each row also reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ubm_build import data, paths
from ubm_build.data.point_in_time import DailySnapshots, EventLog
from ubm_build.model import privacy, quality, train
from ubm_build.model.card import Card
from ubm_build.model.network import DEFAULT_BASE_MODEL, Head, ModelSpec

DEFAULT_EPSILONS = (1.0, 3.0, 8.0)
DEFAULT_OUT = paths.RESULTS / "privacy.json"


def fit_fixed_transforms(head: Head, fit: train.Embedded, *, c: float, seed: int) -> None:
    """The non-private logistic regression on the DP head's data-independent transforms."""
    privacy.set_data_independent_transforms(head, seed)
    with torch.no_grad():
        x = head.inputs(torch.from_numpy(fit.embeddings), torch.from_numpy(fit.inputs.features))
    model = LogisticRegression(C=c, tol=1e-8, max_iter=20_000)
    model.fit(x.numpy().astype(np.float64), fit.labels)
    head.linear.weight.data.copy_(torch.from_numpy(model.coef_.astype(np.float32)))
    head.linear.bias.data.fill_(float(model.intercept_[0]))


def _logits(head: Head, embedded: dict[str, train.Embedded]) -> dict[str, np.ndarray]:
    return {
        name: train.head_logits(head, e.embeddings, e.inputs.features)
        for name, e in embedded.items()
    }


def _row(
    name: str,
    title: str,
    logits: dict[str, np.ndarray],
    reference: np.ndarray,
    embedded: dict[str, train.Embedded],
    record: dict | None = None,
) -> dict:
    test = embedded["test"].labels
    metrics = quality.evaluate(test, 1 / (1 + np.exp(-logits["test"])))
    paired = quality.compare(test, logits["test"], reference)
    return {
        "name": name,
        "title": title,
        "epsilon": None if record is None else record["epsilon"],
        "epsilon_spent": None if record is None else record["epsilon_spent"],
        "delta": None if record is None else record["delta"],
        "noise_multiplier": None if record is None else record["noise_multiplier"],
        "max_grad_norm": None if record is None else record["max_grad_norm"],
        "valid_roc_auc": float(roc_auc_score(embedded["valid"].labels, logits["valid"])),
        "roc_auc": metrics.roc_auc,
        "roc_auc_ci": list(metrics.roc_auc_ci),
        "difference": paired.difference,
        "difference_ci": list(paired.difference_ci),
    }


def measure(
    profile: train.Profile,
    embedded: dict[str, train.Embedded],
    spec: ModelSpec,
    epsilons: Sequence[float],
    seeds: int,
    one_session_epsilons: Sequence[float] = (),
) -> dict:
    """The table: non-private head, fixed-transform head, DP heads at each of `epsilons` (a
    user's gradient: mean of their sessions), and at each of `one_session_epsilons` with one
    random session per sampled user."""
    sizes = (spec.hidden_size, len(spec.feature_names), min(spec.text_components, spec.hidden_size))
    fit = embedded["train"]
    users = [ex.user for ex in fit.examples]

    head = Head(*sizes)
    head.fit(fit.embeddings, fit.inputs.features, fit.labels, c=profile.head_c)
    reference = _logits(head, embedded)
    title = "non-private: standardised features, PCA (as served)"
    rows = [_row("non_private", title, reference, reference["test"], embedded)]

    head = Head(*sizes)
    fit_fixed_transforms(head, fit, c=profile.head_c, seed=profile.seed)
    title = "non-private: fixed scaling, random projection (the DP transforms)"
    fixed = _logits(head, embedded)
    rows.append(_row("fixed_transforms", title, fixed, reference["test"], embedded))

    runs = [(epsilon, "all") for epsilon in epsilons]
    runs += [(epsilon, "one") for epsilon in one_session_epsilons]
    records = []
    for epsilon, sessions in runs:
        config = train.dp_config(dataclasses.replace(profile, dp_epsilon=epsilon))
        config = dataclasses.replace(config, sessions=sessions)
        name, title = f"dp_eps{epsilon:g}", f"DP-SGD per user, ε = {epsilon:g}"
        if sessions == "one":
            name, title = f"{name}_one_session", f"{title}, one random session per step"
        spread = []
        for seed in range(profile.seed, profile.seed + seeds):
            head = Head(*sizes)
            args = (fit.embeddings, fit.inputs.features, fit.labels, users)
            record = privacy.fit_private(head, *args, dataclasses.replace(config, seed=seed))
            logits = _logits(head, embedded)
            spread.append(float(roc_auc_score(embedded["test"].labels, logits["test"])))
            if seed == profile.seed:
                row = _row(name, title, logits, reference["test"], embedded, record)
                records.append(record)
        rows.append(row | {"user_gradient": record["user_gradient"], "seed_roc_aucs": spread})
    common = {}
    if records:
        settings = dataclasses.asdict(config)
        common = {
            "delta": records[0]["delta"],
            "accountant": records[0]["accountant"],
            "sample_rate": records[0]["sample_rate"],
            "steps": records[0]["steps"],
            "dp_settings": {
                k: v for k, v in settings.items() if k not in ("epsilon", "seed", "sessions")
            },
            "seeds": list(range(profile.seed, profile.seed + seeds)),
        }
    return {
        "profile": dataclasses.asdict(profile),
        **common,
        "train_users": len(set(users)),
        "train_sessions": len(fit.labels),
        "test_sessions": len(embedded["test"].labels),
        "test_positives": int(embedded["test"].labels.sum()),
        "rows": rows,
    }


def embed_profile(
    profile: train.Profile, csv: Path, base_model: Path
) -> tuple[dict[str, train.Embedded], ModelSpec]:
    """The profile's windows read point-in-time and embedded by its (base) encoder, once."""
    if profile.pretrain_epochs:
        raise ValueError("privacy_cost needs a profile without masked-LM pretraining")
    snapshots = DailySnapshots(EventLog.read(csv))
    windows = train.training_windows(profile, data.examples_by_window(csv))
    model = train.new_model(profile, base_model)
    reader = train.served_reader(profile, base_model, snapshots)
    return train.embed_windows(model, reader, windows, snapshots), model.spec


def add_to_card(reports: Path, table: dict) -> Path | None:
    """Put `table` into ``reports/card.json``'s card and rewrite it; None if there is none."""
    path = reports / "card.json"
    if not path.is_file():
        return None
    card = Card(**json.loads(path.read_text()))
    return dataclasses.replace(card, privacy=table).write(reports)


def _epsilons(value: str) -> tuple[float, ...]:
    """Comma-separated ε > 0 (none for an empty string)."""
    try:
        epsilons = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value}") from e
    if min(epsilons, default=1) <= 0:
        raise argparse.ArgumentTypeError(f"every ε must be > 0: {value}")
    return epsilons


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ubm_build.model.privacy_cost",
        description="Test ROC-AUC of heads fit with differential privacy (per user) at several"
        " ε against the non-private head.",
    )
    parser.add_argument("--profile", choices=sorted(train.PROFILES), default="full")
    parser.add_argument("--csv", type=Path, default=paths.DEFAULT_CSV, help="UserBehavior.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the table (JSON)")
    parser.add_argument(
        "--epsilons",
        type=_epsilons,
        default=DEFAULT_EPSILONS,
        help="comma-separated ε of the DP heads (default: 1,3,8)",
    )
    parser.add_argument(
        "--one-session-epsilons",
        type=_epsilons,
        default=(3.0,),
        help="comma-separated ε of DP heads that take one random session per sampled user,"
        " the alternative design, for comparison (default: 3; '' for none)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="DP-SGD runs per ε, from the profile's seed on, for the spread (default: 5)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        help="also add the table to DIR/card.json's model card and rewrite it, if there is one",
    )
    args = parser.parse_args(argv)
    if not args.epsilons or args.seeds < 1:
        parser.error("give at least one ε and one seed")
    if not args.csv.is_file():
        parser.error(f"no such file: {args.csv}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Embed once, fit every head, write the table (and the card with ``--reports``)."""
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    profile = train.PROFILES[args.profile]
    embedded, spec = embed_profile(profile, args.csv, DEFAULT_BASE_MODEL)
    embedding_s = time.perf_counter() - started
    table = measure(profile, embedded, spec, args.epsilons, args.seeds, args.one_session_epsilons)
    eps, one = (",".join(f"{e:g}" for e in v) for v in (args.epsilons, args.one_session_epsilons))
    command = (
        f"python -m ubm_build.model.privacy_cost --profile {args.profile} --epsilons {eps}"
        f" --one-session-epsilons '{one}' --seeds {args.seeds}"
    )
    table = {
        "command": command,
        **table,
        "embedding_seconds": round(embedding_s, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    for row in table["rows"]:
        low, high = row["difference_ci"]
        print(
            f"{row['title']}: test ROC-AUC {row['roc_auc']:.4f}, difference"
            f" {row['difference']:+.4f} [{low:+.4f}, {high:+.4f}]",
            file=sys.stderr,
        )
    print(f"wrote {paths.shown(args.out)}", file=sys.stderr)
    if args.reports is not None:
        card = add_to_card(args.reports, table)
        print(f"wrote {card}" if card else f"no card.json in {args.reports}", file=sys.stderr)


if __name__ == "__main__":
    main()
