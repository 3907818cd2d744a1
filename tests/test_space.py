"""Search-space YAML: the shipped spaces load, conditions hold, malformed files name the key."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from abaw_ray.tune.space import SearchSpaceError, load_search_space

REPO = Path(__file__).resolve().parents[1]


def test_va_space_loads_and_combines_features():
    space = load_search_space(REPO / "search_spaces" / "embedded_va.yaml")
    assert space.task == "va"
    combos = space.combinations({"wavlm_large": "wavlm_large.tiny"})
    assert "face_hog+logmel" in combos and "face_pixels+wavlm_large.tiny" in combos
    assert "face_hog" in combos  # audio is optional
    # every visual x audio pair, plus the three-modality combination listed whole
    assert len(combos) == len(space.visual) * len(space.audio) + 1
    assert combos[-1] == "face_hog+logmel+wavlm_large.tiny"


def test_conditional_parameters_follow_the_model():
    space = load_search_space(REPO / "search_spaces" / "embedded_va.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    fn = space.define_by_run(space.combinations())
    for _ in range(40):
        trial = study.ask()
        constants = fn(trial)
        params = {**trial.params, **constants}
        seen.setdefault(params["model"], params)
        assert ("loss_weight" in params) == (params["model"] == "mctn")
        assert ("gates" in params) == (params["model"] == "mfn")
        assert constants["epochs"] == 16 and constants["task"] == "va"
        assert 5e-4 <= params["lr"] <= 5e-3
        study.tell(trial, 0.0)
    assert set(seen) == {"attention", "mfn", "mctn", "transformer"}


GOOD = """task: va
features: {visual: [face_hog], audio: [logmel, null]}
parameters:
  model: {choice: [mfn, mctn]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  loss_weight: {uniform: [0.0, 1.0], when: {model: mctn}}
"""


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("task: va", "task: vb", "task"),
        (
            "lr: {loguniform: [1.0e-4, 1.0e-2]}",
            "lr: {loguniform: [1.0e-2, 1.0e-4]}",
            "parameters.lr.loguniform",
        ),
        (
            "lr: {loguniform: [1.0e-4, 1.0e-2]}",
            "lr: {loguniform: [0, 1.0e-2]}",
            "parameters.lr.loguniform",
        ),
        ("lr: {loguniform: [1.0e-4, 1.0e-2]}", "lr: {gaussian: [0, 1]}", "parameters.lr"),
        (
            "lr: {loguniform: [1.0e-4, 1.0e-2]}",
            "learning_rate: {value: 0.1}",
            "parameters.learning_rate",
        ),
        ("model: {choice: [mfn, mctn]}", "model: {choice: [mfn, lstm9]}", "parameters.model"),
        ("visual: [face_hog]", "visual: [logmel]", "features.visual"),
        ("audio: [logmel, null]", "audio: [wavlm_huge]", "features.audio"),
        ("when: {model: mctn}", "when: {hidden: 64}", "parameters.loss_weight.when.hidden"),
        ("task: va", "task: va\nextra: 1", "extra"),
    ],
)
def test_malformed_space_names_the_key(tmp_path, old, new, key):
    path = tmp_path / "space.yaml"
    path.write_text(GOOD)
    load_search_space(path)  # the unbroken file is fine
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    assert str(err.value).startswith(f"{path}: {key}:")


@pytest.mark.parametrize("task", ["va", "expr"])
def test_the_real_corpus_is_searched_on_the_papers_features(task):
    from abaw_ray.features.registry import list_extractors
    from abaw_ray.tune.job import default_space

    real = load_search_space(default_space(task, embedded=False))
    embedded = load_search_space(default_space(task, embedded=True))
    assert default_space(task, embedded=False).name == f"{task}.yaml"
    assert default_space(task, embedded=True).name == f"embedded_{task}.yaml"
    assert real.task == embedded.task == task
    assert {"clip_large", "eva02_large"} <= set(real.visual)
    assert "wavlm_large" in real.audio and None in real.audio
    if task == "va":
        assert "whisper_v3" in real.audio
    else:
        assert {"mobilenetv3", "efficientnetv2"} <= set(real.visual)
    assert not {"face_hog", "face_pixels", "logmel"} & set(real.extractors)
    assert set(real.extractors) <= set(list_extractors())
    assert "face_hog" in embedded.extractors
