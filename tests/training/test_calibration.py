"""Temperature scaling: the fit, its storage in the model file, the Classifier applying it, evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from medres3d.errors import ConfigError
from medres3d.inference.calibration import apply_temperature
from medres3d.training.calibration import fit_temperature, negative_log_likelihood


def _overconfident(n: int, k: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.0 * np.eye(k)[y]
    # the labels follow softmax(logits); the model reports softmax(sharpen * logits)
    y = np.array([rng.choice(k, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    p = np.exp(sharpen * logits)
    return p / p.sum(axis=1, keepdims=True), y


def test_the_fit_finds_the_temperature_that_undoes_overconfidence():
    probs, y = _overconfident(4000, 3, sharpen=3.0, seed=0)
    fit = fit_temperature(probs, y)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.nll_after < fit.nll_before
    # the minimum of a fine grid, an independent search
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 400))
    best = grid[np.argmin([negative_log_likelihood(apply_temperature(probs, t), y) for t in grid])]
    assert fit.temperature == pytest.approx(best, rel=0.02)
    assert fit.nll_after <= negative_log_likelihood(apply_temperature(probs, best), y) + 1e-6


def test_temperature_never_changes_the_label():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([0.3, 0.3, 0.3, 0.3], size=2000)
    for t in (0.1, 0.7, 1.0, 2.5, 19.0):
        scaled = apply_temperature(probs, t)
        assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    with pytest.raises(ConfigError, match="temperature must be a positive finite number, got 0"):
        apply_temperature(probs, 0)


@pytest.fixture(scope="module")
def calibrated_model(lesion_dataset, make_config, tmp_path_factory):
    from medres3d.training import Trainer

    out = tmp_path_factory.mktemp("calibrated")
    config = make_config(lesion_dataset, out, epochs=2, calibration="temperature")
    return Trainer(config, verbose=False).fit().model_path


def test_the_model_file_stores_it_and_the_classifier_applies_it(calibrated_model, lesion_dataset):
    from medres3d import Classifier, read_model
    from medres3d.modelfile import read_provenance

    stored = read_provenance(calibrated_model)["calibration"]
    assert stored["method"] == "temperature" and stored["nll_after"] <= stored["nll_before"]
    clf = Classifier.load(calibrated_model, device="cpu", evidence=False)
    assert clf.temperature == stored["temperature"]
    model = read_model(calibrated_model)
    raw = Classifier(model.net, model.class_names, model.preprocessing, device="cpu", evidence=False)
    assert raw.temperature is None
    lines = lesion_dataset.read_text().splitlines()[1:6]
    scans = [lesion_dataset.parent / line.split(",")[0] for line in lines]
    for scan in scans:
        p, q = clf.predict(scan), raw.predict(scan)
        assert p.label == q.label
        assert p.meta["uncalibrated"] == pytest.approx(q.probabilities, abs=1e-6)
        expected = apply_temperature([q.probabilities[n] for n in clf.class_names], stored["temperature"])
        assert [p.probabilities[n] for n in clf.class_names] == pytest.approx(expected.tolist(), abs=1e-6)


def test_evaluate_reports_calibration_before_and_after(calibrated_model, lesion_dataset, tmp_path):
    from medres3d import evaluate

    # on the split it was fitted on, the NLL cannot go up
    result = evaluate(calibrated_model, lesion_dataset, split="val", out_dir=tmp_path, num_resamples=100,
                      device="cpu")
    c = result.calibration
    assert c["after"]["nll"] <= c["before"]["nll"] + 1e-9
    assert c["after"]["brier"]["value"] == result.metrics["brier"].value
    assert "Calibration: temperature" in (tmp_path / "metrics.md").read_text()


def test_models_without_calibration_still_load(lesion_dataset, make_config, tmp_path):
    from medres3d import Classifier
    from medres3d.modelfile import read_provenance
    from medres3d.training import Trainer

    config = make_config(lesion_dataset, tmp_path, epochs=1, calibration="none")
    path = Trainer(config, verbose=False).fit().model_path
    assert read_provenance(path)["calibration"] is None
    assert Classifier.load(path, device="cpu").temperature is None


def test_auto_keeps_no_temperature_it_cannot_trust():
    from medres3d.training.calibration import TemperatureFit, auto_refusal

    probs, y = _overconfident(400, 2, sharpen=3.0, seed=2)
    assert auto_refusal(fit_temperature(probs, y)) is None  # enough scans, an interior minimum
    few = fit_temperature(probs[:12], y[:12])
    assert "12 validation scans are too few" in auto_refusal(few)
    # every scan right with margin: the NLL falls as T shrinks, down to the search bound
    separated = np.array([[0.9, 0.1], [0.2, 0.8]] * 15)
    fit = fit_temperature(separated, np.array([0, 1] * 15))
    assert fit.temperature == pytest.approx(0.05, rel=0.02)
    assert "at the search bound" in auto_refusal(fit)
    assert "did not lower" in auto_refusal(TemperatureFit(1.3, 0.5, 0.5, 40))


def test_auto_refuses_a_temperature_from_a_tiny_validation_split(lesion_dataset, make_config, tmp_path):
    from medres3d.modelfile import read_provenance
    from medres3d.training import Trainer

    config = make_config(lesion_dataset, tmp_path, epochs=1, calibration="auto")
    stored = read_provenance(Trainer(config, verbose=False).fit().model_path)["calibration"]
    assert stored["method"] == "none" and "too few to fit a temperature" in stored["reason"]
