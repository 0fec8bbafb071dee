"""Metrics agree with scikit-learn / numpy; losses implement paper equation 7 and section 3.4."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from aver.train.losses import ccc, ccc_loss, classification_loss, total_loss
from aver.train.metrics import classification_metrics, regression_metrics


def _eq7(x: np.ndarray, y: np.ndarray) -> float:
    """Paper equation 7 written literally: 2 rho sx sy / (sx^2 + sy^2 + (mx - my)^2), population std."""
    rho = np.corrcoef(x, y)[0, 1]
    sx, sy = x.std(), y.std()
    return float(2 * rho * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2))


# ---------------------------------------------------------------- classification metrics vs scikit-learn


def _check_against_sklearn(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> None:
    labels = list(range(n_classes))
    names = [f"c{i}" for i in labels]
    m = classification_metrics(y_true, y_pred, n_classes, names)
    with warnings.catch_warnings():  # sklearn warns about the very edge cases this test is after
        warnings.simplefilter("ignore")
        f1 = skm.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        expected = {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "f1_macro": skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
            "f1_micro": skm.f1_score(y_true, y_pred, labels=labels, average="micro", zero_division=0),
            "uar": skm.balanced_accuracy_score(y_true, y_pred),
            "recall_macro": skm.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        }
        recall = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        precision = skm.precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    np.testing.assert_allclose([m["f1"][n] for n in names], f1, atol=1e-12)
    np.testing.assert_allclose([m["recall"][n] for n in names], recall, atol=1e-12)
    np.testing.assert_allclose([m["precision"][n] for n in names], precision, atol=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert [m["support"][n] for n in names] == np.bincount(y_true, minlength=n_classes).tolist()
    assert m["n"] == len(y_true) and m["class_names"] == names


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_classes", [2, 6, 8])
def test_classification_matches_sklearn(seed, n_classes):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y_true = rng.integers(0, n_classes, n)
    # half the predictions correct so that the metrics are not all near chance
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, n_classes, n))
    _check_against_sklearn(y_true, y_pred, n_classes)


@pytest.mark.parametrize("seed", range(4))
def test_class_absent_from_both_counts_as_zero_in_macro(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 5, 40), rng.integers(0, 5, 40)  # class 5 never occurs
    _check_against_sklearn(y_true, y_pred, 6)
    m = classification_metrics(y_true, y_pred, 6)
    assert m["f1"]["5"] == 0.0 and m["support"]["5"] == 0
    assert m["f1_macro"] == pytest.approx(np.mean([m["f1"][str(i)] for i in range(5)]) * 5 / 6)
    # UAR skips the class with no samples, recall_macro (sklearn's macro) counts it as 0
    assert m["uar"] == pytest.approx(m["recall_macro"] * 6 / 5)


def test_class_only_predicted_or_only_true():
    y_true = np.array([0, 0, 1, 1, 1, 3])
    y_pred = np.array([0, 2, 1, 1, 0, 0])  # 2 only predicted, 3 only true
    _check_against_sklearn(y_true, y_pred, 4)
    m = classification_metrics(y_true, y_pred, 4)
    assert m["precision"]["2"] == 0.0 and m["recall"]["3"] == 0.0
    assert m["confusion_matrix"][0] == [1, 0, 1, 0]  # rows true, columns predicted


def test_perfect_predictions_and_torch_input():
    y = torch.tensor([0, 1, 2, 2, 1])
    m = classification_metrics(y, y.clone(), 3, ["a", "b", "c"])
    assert m["accuracy"] == m["f1_macro"] == m["f1_micro"] == m["uar"] == 1.0
    assert m["recall"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_classification_metrics_are_json_serialisable():
    rng = np.random.default_rng(0)
    m = classification_metrics(rng.integers(0, 3, 20), rng.integers(0, 3, 20), 3, ["x", "y", "z"])
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) is float for v in m["f1"].values()) and type(m["support"]["x"]) is int


@pytest.mark.parametrize(
    ("y_true", "y_pred", "n_classes", "names", "match"),
    [
        ([0, 1, 3], [0, 1, 1], 3, None, "outside"),
        ([-1, 0], [0, 0], 2, None, "outside"),
        ([], [], 2, None, "no samples"),
        ([0, 1], [0], 2, None, "length"),
        ([0, 1], [0, 1], 2, ["a"], "class names"),
        ([0.5, 1], [0, 1], 2, None, "integer"),
    ],
)
def test_classification_metrics_reject_bad_input(y_true, y_pred, n_classes, names, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.array(y_true), np.array(y_pred), n_classes, names)


# ---------------------------------------------------------------- regression metrics


@pytest.mark.parametrize("seed", range(4))
def test_regression_metrics_match_references(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.normal(size=(50, 3))
    y_pred = 0.7 * y_true + rng.normal(0.2, 0.5, size=(50, 3))
    names = ["arousal", "valence", "dominance"]
    m = regression_metrics(y_true, y_pred, names)
    for k, name in enumerate(names):
        t, p = y_true[:, k], y_pred[:, k]
        assert m["ccc"][name] == pytest.approx(_eq7(p, t), abs=1e-12)
        assert m["pearson"][name] == pytest.approx(np.corrcoef(p, t)[0, 1], abs=1e-12)
        assert m["mae"][name] == pytest.approx(skm.mean_absolute_error(t, p), abs=1e-12)
        assert m["rmse"][name] == pytest.approx(np.sqrt(skm.mean_squared_error(t, p)), abs=1e-12)
    assert m["ccc_mean"] == pytest.approx(np.mean(list(m["ccc"].values())))
    assert json.loads(json.dumps(m)) == m


def test_regression_metrics_edge_cases():
    y = np.array([0.1, 0.4, -0.3, 0.9])
    m = regression_metrics(y, y)  # 1-D means K = 1
    assert m["ccc"]["0"] == pytest.approx(1.0) and m["mae"]["0"] == 0.0
    assert regression_metrics(y, -y)["ccc"]["0"] < 0
    const = regression_metrics(y, np.full(4, 0.5))
    assert const["ccc"]["0"] == 0.0 and const["pearson"]["0"] == 0.0  # constant prediction: no agreement
    assert regression_metrics(np.ones(3), np.ones(3))["ccc"]["0"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(y, np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="2 samples"):
        regression_metrics(np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="target names"):
        regression_metrics(np.ones((4, 2)), np.ones((4, 2)), ["a"])


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("seed", range(5))
def test_ccc_matches_equation_7(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 1.2, 40)
    y = 0.5 * x + rng.normal(-0.1, 0.8, 40)
    got = ccc(torch.from_numpy(x), torch.from_numpy(y))
    assert got.item() == pytest.approx(_eq7(x, y), abs=1e-7)
    loss = ccc_loss(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None])
    assert loss.item() == pytest.approx(1 - got.item(), abs=1e-12)


def test_ccc_extremes():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert ccc(x, x).item() == pytest.approx(1.0, abs=1e-6)
    z = x - x.mean()  # zero mean, so -z has the same mean and variance
    assert ccc(z, -z).item() == pytest.approx(-1.0, abs=1e-6)
    assert ccc(x, x + 1.0).item() < 0.9  # a shift lowers CCC though Pearson stays 1
    assert ccc(torch.ones(5), torch.ones(5)).item() == 0.0  # eps keeps the constant case finite
    assert ccc(x.half(), x.half()).dtype == torch.float32


def test_ccc_loss_is_mean_over_targets():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g)
    expected = torch.stack([1 - ccc(pred[:, k], target[:, k]) for k in range(3)]).mean()
    assert ccc_loss(pred, target).item() == pytest.approx(expected.item(), abs=1e-6)
    assert ccc_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("constant", [False, True])
def test_ccc_loss_gradient_is_finite(constant):
    g = torch.Generator().manual_seed(2)
    target = torch.randn(16, 3, generator=g)
    pred = (torch.zeros(16, 3) if constant else torch.randn(16, 3, generator=g)).requires_grad_()
    ccc_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_ccc_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        ccc_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="one shape"):
        ccc_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="1-D"):
        ccc(torch.zeros(4, 3), torch.zeros(4, 3))


def test_classification_loss_is_cross_entropy():
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    manual = -torch.log_softmax(logits, dim=1)[torch.arange(8), labels].mean()
    assert classification_loss(logits, labels).item() == pytest.approx(manual.item(), abs=1e-6)
    assert classification_loss(logits, labels, label_smoothing=0.1).item() != pytest.approx(manual.item())
    with pytest.raises(ValueError, match="label_smoothing"):
        classification_loss(logits, labels, label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        classification_loss(logits, labels[:4])


def test_soft_label_loss_matches_a_direct_computation():
    """Consensus labels: the soft cross-entropy -sum_c p_c log softmax(z)_c, averaged over clips."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 4, generator=g)
    p = torch.softmax(torch.randn(6, 4, generator=g), dim=1)
    direct = (
        sum(-(p[i] * torch.log(torch.exp(logits[i]) / torch.exp(logits[i]).sum())).sum() for i in range(6))
        / 6
    )
    assert classification_loss(logits, p).item() == pytest.approx(direct.item(), abs=1e-6)
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    hard = classification_loss(logits, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert classification_loss(logits, one_hot).item() == pytest.approx(hard.item(), abs=1e-6)
    with pytest.raises(ValueError, match="soft labels"):
        classification_loss(logits, p[:, :3])


def _outputs(n: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    heads = ("logits_video", "logits_audio", "logits_fusion")
    return {k: torch.randn(n, width, generator=g, requires_grad=True) for k in heads}


@pytest.mark.parametrize(("task", "width"), [("classification", 5), ("regression", 3)])
def test_total_loss_sums_heads(task, width):
    outputs = _outputs(12, width, seed=4)
    g = torch.Generator().manual_seed(5)
    targets = torch.randint(0, 5, (12,), generator=g) if task == "classification" else torch.randn(12, 3)
    head_loss = classification_loss if task == "classification" else ccc_loss
    total, per_head = total_loss(outputs | {"attn_video": torch.zeros(2)}, targets, head_loss)
    separate = {h: head_loss(outputs[f"logits_{h}"], targets) for h in ("video", "audio", "fusion")}
    assert set(per_head) == set(separate)
    for h, value in separate.items():
        assert per_head[h].item() == pytest.approx(value.item(), abs=1e-6) and not per_head[h].requires_grad
    assert total.item() == pytest.approx(sum(v.item() for v in separate.values()), abs=1e-5)
    total.backward()
    assert all(t.grad is not None for t in outputs.values())


def test_total_loss_with_missing_heads():
    outputs = _outputs(6, 3, seed=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    only_two = {
        "logits_video": outputs["logits_video"],
        "logits_fusion": None,
        "logits_audio": outputs["logits_audio"],
    }
    total, per_head = total_loss(only_two, labels, classification_loss)
    assert set(per_head) == {"video", "audio"}
    assert total.item() == pytest.approx(per_head["video"].item() + per_head["audio"].item(), abs=1e-6)
    with pytest.raises(ValueError, match="no head outputs"):
        total_loss({"attn": torch.zeros(1)}, labels, classification_loss)
    with pytest.raises(ValueError, match="unknown head"):
        total_loss(outputs | {"logits_vidoe": outputs["logits_video"]}, labels, classification_loss)
