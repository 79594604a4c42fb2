"""Differentially private head training (`ubm_build.model.privacy`) on small synthetic data."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from ubm_build import cli
from ubm_build.inputs.model_inputs import FEATURE_NAMES
from ubm_build.model import privacy, privacy_cost, train
from ubm_build.model.card import Card
from ubm_build.model.network import Head, ModelSpec

HIDDEN, COMPONENTS = 16, 4
RECORD_KEYS = {
    "epsilon",
    "epsilon_spent",
    "delta",
    "noise_multiplier",
    "max_grad_norm",
    "sample_rate",
    "expected_batch_users",
    "epochs",
    "steps",
    "accountant",
    "users",
    "sessions",
    "unit",
    "user_gradient",
}


def synthetic(users: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(embeddings, features, labels, user of each row): 1-5 sessions per user, features
    uniform over their a-priori ranges, labels from a noisy linear rule on them."""
    rng = np.random.default_rng(seed)
    sessions = rng.integers(1, 6, users)
    owner = [f"user{u}" for u, k in enumerate(sessions) for _ in range(k)]
    n = len(owner)
    centre, half_width = privacy.fixed_feature_scaling()
    unit = rng.uniform(-1, 1, (n, len(FEATURE_NAMES)))
    features = (centre + half_width * unit).astype(np.float32)
    truth = np.zeros(len(FEATURE_NAMES))
    truth[:4] = (2.0, -2.0, 1.5, 1.0)
    labels = (unit @ truth + rng.normal(0, 0.5, n) > 0).astype(np.int64)
    embeddings = rng.normal(0, 1, (n, HIDDEN)).astype(np.float32)
    return embeddings, features, labels, owner


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    return synthetic(200, seed=0)


@pytest.fixture(scope="module")
def private_fit(data) -> tuple[Head, dict]:
    head = Head(HIDDEN, len(FEATURE_NAMES), COMPONENTS)
    config = privacy.DPConfig(epsilon=8.0, expected_batch_users=32, epochs=20)
    return head, privacy.fit_private(head, *data, config)


def test_the_fit_spends_at_most_the_target_epsilon_and_records_it(data, private_fit):
    _, record = private_fit
    assert set(record) >= RECORD_KEYS
    assert record["epsilon_spent"] <= record["epsilon"] + 0.02
    assert record["epsilon_spent"] > 0.5 * record["epsilon"]  # the noise is not wildly larger
    assert record["accountant"] == "rdp" and record["noise_multiplier"] > 0
    assert record["users"] == 200 and record["sessions"] == len(data[2])
    assert record["delta"] == pytest.approx(privacy.default_delta(200))
    assert record["delta"] < 1 / 200
    assert record["sample_rate"] == pytest.approx(1 / np.ceil(200 / 32))
    assert record["steps"] == record["epochs"] * round(1 / record["sample_rate"])


def test_a_smaller_epsilon_takes_more_noise(data, private_fit):
    _, loose = private_fit
    config = privacy.DPConfig(epsilon=1.0, delta=1e-4, expected_batch_users=32, epochs=20)
    strict = privacy.fit_private(Head(HIDDEN, len(FEATURE_NAMES), COMPONENTS), *data, config)
    assert strict["delta"] == 1e-4 and strict["epsilon_spent"] <= 1.02
    assert strict["noise_multiplier"] > loose["noise_multiplier"]


def test_the_dp_head_beats_chance_on_separable_data(private_fit):
    head, _ = private_fit
    embeddings, features, labels, _ = synthetic(200, seed=1)  # held-out users
    logits = train.head_logits(head, embeddings, features)
    assert roc_auc_score(labels, logits) > 0.75
    assert float(head.calibration_scale) == 1.0 and float(head.calibration_bias) == 0.0


def _rows_dataset(data, sessions: str) -> tuple[privacy.UserSessions, list[str]]:
    """`UserSessions` whose every input is its row number (so an item says which rows)."""
    _, _, labels, owner = data
    rows = np.arange(1, len(owner) + 1, dtype=np.float32)[:, None]  # 0 is padding
    return privacy.UserSessions(rows, labels, owner, sessions=sessions, seed=0), owner


def _item_rows(inputs: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return [int(v) - 1 for v in inputs[mask.bool(), 0].tolist()]


def test_the_dataset_is_indexed_by_user_and_holds_only_their_sessions(data):
    everything, owner = _rows_dataset(data, "all")
    one, _ = _rows_dataset(data, "one")
    assert len(everything) == len(one) == len(set(owner)) == 200
    for user in range(200):
        theirs = {row for row, name in enumerate(owner) if name == everything.user_ids[user]}
        inputs, _, mask, index = everything[user]
        assert index == user and sorted(_item_rows(inputs, mask)) == sorted(theirs)
        drawn = [_item_rows(*one[user][::2]) for _ in range(20)]
        assert all(len(rows) == 1 and rows[0] in theirs for rows in drawn)
    five = next(u for u in range(200) if len(one.rows[u]) == 5)
    assert len({_item_rows(*one[five][::2])[0] for _ in range(200)}) == 5  # random, not fixed


@pytest.mark.parametrize("sessions", ["all", "one"])
def test_each_poisson_step_takes_each_user_at_most_once(data, sessions):
    dataset, owner = _rows_dataset(data, sessions)
    torch.manual_seed(0)
    loader = DPDataLoader.from_data_loader(DataLoader(dataset, batch_size=32))
    assert loader.sample_rate == pytest.approx(1 / 7)
    batches = list(loader)
    assert len(batches) == 7
    for inputs, _, mask, users in batches:
        assert len(set(users.tolist())) == len(users)  # no user twice in a step
        for item, user in enumerate(users.tolist()):
            rows = _item_rows(inputs[item], mask[item])
            assert rows and {owner[row] for row in rows} == {dataset.user_ids[user]}
            if sessions == "one":
                assert len(rows) == 1


def test_a_user_gradient_is_the_mean_of_their_sessions():
    logits = torch.tensor([[0.0, 2.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    first = (bce(logits[0, 0], labels[0, 0]) + bce(logits[0, 1], labels[0, 1])) / 2
    expected = (first + bce(logits[1, 0], labels[1, 0])) / 2
    torch.testing.assert_close(privacy.user_loss(logits, labels, mask), expected)


def test_the_transforms_do_not_depend_on_the_data():
    heads = []
    for seed in (0, 1):
        head = Head(HIDDEN, len(FEATURE_NAMES), COMPONENTS)
        config = privacy.DPConfig(epsilon=1.0, expected_batch_users=16, epochs=1)
        privacy.fit_private(head, *synthetic(50, seed=seed), config)
        heads.append(head)
    for name in ("feature_mean", "feature_scale", "embedding_mean", "projection"):
        torch.testing.assert_close(getattr(heads[0], name), getattr(heads[1], name))
    projection = heads[0].projection.double()
    gram = projection.T @ projection * COMPONENTS / HIDDEN
    torch.testing.assert_close(gram, torch.eye(COMPONENTS, dtype=torch.float64))


def test_dp_is_refused_with_masked_lm_pretraining_and_bad_budgets():
    quick = train.PROFILES["quick"]
    with pytest.raises(ValueError, match="pretrain"):
        dataclasses.replace(quick, pretrain_epochs=1, dp_epsilon=1.0)
    for bad in ({"dp_epsilon": 0.0}, {"dp_epsilon": 1.0, "dp_delta": 1.0}, {"dp_delta": 1e-5}):
        with pytest.raises(ValueError):
            dataclasses.replace(quick, **bad)
    assert train.dp_config(dataclasses.replace(quick, dp_epsilon=2.0)).epsilon == 2.0
    assert dataclasses.asdict(quick)["dp_epsilon"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dp-delta", "1e-5"], "--dp-delta needs --dp-epsilon"),
        (["--dp-epsilon", "0"], "--dp-epsilon"),
        (["--dp-epsilon", "1", "--dp-delta", "1.5"], "--dp-delta"),
    ],
)
def test_the_train_command_checks_its_dp_options(tmp_path, args, message):
    result = CliRunner().invoke(cli.main, ["train", "--model-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not any(tmp_path.iterdir())


def test_the_card_states_the_privacy_record_and_table(private_fit):
    _, record = private_fit
    row = {
        "title": "DP-SGD per user, ε = 8",
        "epsilon": 8.0,
        "noise_multiplier": 0.9,
        "max_grad_norm": 1.0,
        "roc_auc": 0.68,
        "roc_auc_ci": [0.63, 0.73],
        "difference": -0.02,
        "difference_ci": [-0.04, 0.0],
        "seed_roc_aucs": [0.68, 0.61, 0.69],
    }
    table = {"command": "python -m ubm_build.model.privacy_cost", "delta": 1e-3, "rows": [row]}
    fields = {
        "windows": {},
        "models": {},
        "ablation": {},
        "best_baseline": "lightgbm",
        "variants": [],
        "served_variant": "fp32",
    }
    private = Card(summary={"privacy": record}, privacy=table, **fields).privacy_lines()
    text = "\n".join(private)
    assert text.startswith("## Privacy") and "per **user**" in text
    assert f"noise multiplier {record['noise_multiplier']:.3f}" in text
    assert "uncalibrated" in text and "snapshot" in text
    assert "| DP-SGD per user, ε = 8 | 8 | 0.900 | 1.0 | 0.680 [0.630, 0.730] |" in text
    assert "| 0.610 .. 0.690 |" in text
    assert Card(summary={}, **fields).privacy_lines() == []


def test_the_cost_table_has_every_row_against_the_non_private_head():
    windows = {}
    for name, seed in (("train", 0), ("valid", 1), ("test", 2)):
        embeddings, features, labels, owner = synthetic(60, seed=seed)
        examples = [SimpleNamespace(user=user) for user in owner]
        inputs = SimpleNamespace(features=features)
        windows[name] = train.Embedded(examples, inputs, embeddings, labels)
    spec = ModelSpec(max_length=32, base_model="-", hidden_size=HIDDEN, text_components=4)
    profile = dataclasses.replace(train.PROFILES["quick"], seed=0)
    table = privacy_cost.measure(profile, windows, spec, (1.0,), 2, (1.0,))
    names = [row["name"] for row in table["rows"]]
    assert names == ["non_private", "fixed_transforms", "dp_eps1", "dp_eps1_one_session"]
    reference, *others = table["rows"]
    assert reference["difference"] == 0.0 and reference["epsilon"] is None
    for row in others:
        low, high = row["difference_ci"]
        assert low <= row["difference"] <= high
        assert row["roc_auc"] - reference["roc_auc"] == pytest.approx(row["difference"])
    for row in others[1:]:
        assert row["epsilon"] == 1.0 and row["epsilon_spent"] <= 1.02
        assert len(row["seed_roc_aucs"]) == 2
    assert table["train_users"] == 60 and table["dp_settings"]["max_grad_norm"] > 0
    json.dumps(table)
    assert privacy_cost.parse_args(["--epsilons", "0.5,2"]).epsilons == (0.5, 2.0)
    with pytest.raises(SystemExit):
        privacy_cost.parse_args(["--epsilons", "1,-1"])


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_opacus_clips_one_gradient_per_user_over_all_their_sessions():
    """The per-sample gradient Opacus clips is one user's whole gradient (sessions summed in)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 1)
    inputs, labels = torch.randn(2, 4, 3), torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    module = GradSampleModule(linear, loss_reduction="mean")
    privacy.user_loss(module(inputs).squeeze(-1), labels, mask).backward()
    for user in range(2):
        alone = torch.nn.Linear(3, 1)
        alone.load_state_dict(linear.state_dict())
        loss = privacy.user_loss(
            alone(inputs[user : user + 1]).squeeze(-1), labels[[user]], mask[[user]]
        )
        loss.backward()
        torch.testing.assert_close(linear.weight.grad_sample[user], alone.weight.grad)
        torch.testing.assert_close(linear.bias.grad_sample[user], alone.bias.grad)
