"""Search-space YAML: the shipped spaces load, conditions hold, malformed files name the key."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

import optuna
import pytest

from abaw_ray.train.loop import TrialConfig
from abaw_ray.tune.search import trial_params
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


@pytest.mark.parametrize(
    "line, message",
    [
        ("  loss: {choice: [mix, focall]}\n", "'focall' is not one of 'mix', 'ce', 'f1', 'focal'"),
        ("  alignment: {value: convolution}\n", "is not one of 'interp', 'pool', 'conv'"),
        ("  gates: {choice: [paerp], when: {model: mfn}}\n", "one of 'paper', 'reference'"),
        ("  cycle: {value: all, when: {model: mctn}}\n", "one of 'first', 'every'"),
        ("  hidden: {uniform: [16, 64]}\n", "is not an int"),
        ("  causal: {value: true}\n", "model mfn takes no causal"),
        ("  video_norm: {value: 1}\n", "is not a bool"),
        ("  hiddden: {value: 32}\n", "unknown setting"),
    ],
)
def test_a_misspelt_or_mistyped_setting_fails_when_the_space_loads(tmp_path, line, message):
    """Every setting is checked against its type where the space loads: a category's valid
    values, a model's own settings, and a setting that a model the space can pick does not
    take (``loss: focall`` once trained ``mix`` without a word)."""
    path = tmp_path / "space.yaml"
    path.write_text(GOOD + line)
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_any_model_setting_can_be_searched_where_its_model_is_picked(tmp_path):
    """tcn's kernel_size and causal (absent from the old central list) are searched like any
    setting, under a condition on the model."""
    path = tmp_path / "space.yaml"
    path.write_text(
        "task: va\nfeatures: {visual: [face_hog]}\nparameters:\n"
        "  model: {choice: [tcn, attention]}\n"
        "  kernel_size: {choice: [3, 5], when: {model: tcn}}\n"
        "  causal: {choice: [true, false], when: {model: tcn}}\n"
        "  hidden: {choice: [32, 64]}\n"
    )
    space = load_search_space(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = space.define_by_run(space.combinations())
    picked = set()
    for _ in range(20):
        trial = study.ask()
        constants = fn(trial)
        config = {**trial.params, **constants}
        cfg = TrialConfig.from_dict(config)
        picked.add(cfg.model)
        if cfg.model == "tcn":
            assert set(cfg.model_args) == {"kernel_size", "causal", "hidden"}
        else:
            assert cfg.model_args == {"hidden": config["hidden"]}
        study.tell(trial, 0.0)
    assert picked == {"tcn", "attention"}


def test_a_trial_records_every_setting_it_trained_with():
    """MLflow records what a trial trained with: the model's defaults for what the space left
    out (an expression transformer's 6 layers, not None)."""
    settings = trial_params({"task": "expr", "model": "expr_transformer", "hidden": 32})
    assert settings["layers"] == 6 and settings["heads"] == 4 and settings["hidden"] == 32
    assert settings["loss"] == "mix" and settings["modality_dropout"] == 0.0
    assert None not in {settings[k] for k in ("layers", "heads", "dropout", "hidden")}


def test_trial_settings_are_checked_where_a_trial_is_built():
    with pytest.raises(ValueError, match="model attention"):
        TrialConfig.from_dict({"model": "attention", "layers": 2})
    with pytest.raises(ValueError, match="one of 'mix', 'ce', 'f1', 'focal'"):
        TrialConfig.from_dict({"loss": "focall"})
    cfg = TrialConfig.from_dict({"model": "mfn", "gates": "reference", "memory": None})
    assert cfg.model_args == {"gates": "reference"}
    assert TrialConfig.from_dict(asdict(cfg)) == cfg  # what a checkpoint or a task carries


def test_a_new_model_and_its_new_setting_need_no_edit_outside_the_model(tmp_path):
    """A family is its class, registered by name: its settings (here a new one, ``bias``)
    reach a search space, a trial, MLflow and the model with no other edit."""
    import torch
    from torch import nn

    from abaw_ray.models import create_model, model_settings
    from abaw_ray.models.registry import _MODELS, register_model

    @register_model("tiny_linear_for_test")
    class TinyLinear(nn.Module):
        def __init__(
            self,
            input_dims: list[int],
            output_dim: int,
            bias: Literal["none", "learned"] = "learned",  # the new setting
        ) -> None:
            super().__init__()
            self.head = nn.Linear(sum(input_dims), output_dim, bias=bias == "learned")

        def forward(self, inputs):
            return {"pred": self.head(torch.cat(list(inputs), -1))}

    try:
        assert model_settings("tiny_linear_for_test")["bias"].default == "learned"
        path = tmp_path / "space.yaml"
        path.write_text(
            "task: va\nfeatures: {visual: [face_hog]}\nparameters:\n"
            "  model: {value: tiny_linear_for_test}\n  bias: {choice: [none, learned]}\n"
        )
        load_search_space(path)
        path.write_text(path.read_text().replace("[none, learned]", "[none, lerned]"))
        with pytest.raises(SearchSpaceError, match="one of 'none', 'learned'"):
            load_search_space(path)
        cfg = TrialConfig.from_dict({"model": "tiny_linear_for_test", "bias": "none"})
        assert trial_params(asdict(cfg))["bias"] == "none"
        model = create_model(cfg.model, [3, 2], "va", **cfg.model_args)
        assert model.core.head.bias is None
        out = model([torch.zeros(1, 4, 3), torch.zeros(1, 4, 2)])["pred"]
        assert out.shape == (1, 4, 2)
    finally:
        _MODELS.pop("tiny_linear_for_test")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("  alignment: {value: pool}\n", ("pool",)),  # one value: not its characters
        ("  alignment: {choice: [interp, conv]}\n", ("interp", "conv")),
        ("", ("interp",)),  # not searched: TrialConfig's default
    ],
)
def test_the_bank_holds_the_alignments_a_space_can_ask_for(tmp_path, line, expected):
    space = tmp_path / "s.yaml"
    space.write_text(f"task: va\nfeatures: {{visual: [face_hog]}}\nparameters:\n{line}")
    assert load_search_space(space).alignments() == expected


GRID = """task: va
features: {visual: [face_hog], audio: [logmel, null]}
parameters:
  model: {choice: [mfn, mctn]}
  lr: {loguniform: [2.0e-3, 8.0e-3]}
  weight_decay: {loguniform: [1.0e-5, 1.0e-3]}
  hidden: {choice: [32, 48]}
  window: {randint: [10, 21]}
  loss_weight: {uniform: [0.0, 1.0], when: {model: mctn}}
  epochs: {value: 7}
"""


def test_the_grid_is_every_combination_x_model_with_defaults_else_the_spaces_middle(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    space = load_search_space(path)
    rows = space.grid(space.combinations())
    assert [(r["features"], r["model"]) for r in rows] == [
        ("face_hog+logmel", "mfn"),
        ("face_hog+logmel", "mctn"),
        ("face_hog", "mfn"),
        ("face_hog", "mctn"),
    ]
    mctn = rows[1]
    assert mctn["weight_decay"] == TrialConfig.weight_decay  # the default, inside the range
    assert mctn["lr"] == pytest.approx(4e-3)  # 1e-3 is outside: the geometric middle
    assert mctn["hidden"] == 32  # the model's default (64) is not offered: the first choice
    assert mctn["window"] == 15  # TrialConfig's 64 is outside [10, 21]
    assert mctn["loss_weight"] == 0.1  # mctn's own default
    assert mctn["epochs"] == 7 and mctn["task"] == "va"
    assert "loss_weight" not in rows[0]  # conditional on mctn
    for row in rows:
        TrialConfig.from_dict(row)  # every row is a valid trial


def test_the_grid_searcher_starts_at_the_search_seed_repeats_with_the_next_and_resumes(tmp_path):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.search_generator import SearchGenerator

    from abaw_ray.tune.search import GridSearcher

    rows = [{"model": "a"}, {"model": "b"}, {"model": "c"}]
    first = GridSearcher(rows, "score", seed=7)  # the search's --seed 7: trial seeds 7, 8, ...
    proposed = [first.suggest(f"t{i}") for i in range(4)]
    assert [(p["model"], p["seed"]) for p in proposed] == [("a", 7), ("b", 7), ("c", 7), ("a", 8)]
    generator = SearchGenerator(ConcurrencyLimiter(first, 2))
    generator.save_to_dir(str(tmp_path), session_str="s")
    resumed = GridSearcher([], "score")
    SearchGenerator(ConcurrencyLimiter(resumed, 2)).restore_from_dir(str(tmp_path))
    assert (resumed.suggest("t4")["model"], resumed.suggest("t5")["seed"]) == ("b", 8)


def test_the_job_takes_searcher_grid_and_a_misspelt_searcher_names_the_valid(capsys):
    import re

    from abaw_ray.tune.job import search_config, search_parser

    space = load_search_space(REPO / "search_spaces" / "realistic_va.yaml")
    parser = search_parser("va", None)
    assert search_config(parser.parse_args(["--searcher", "grid"]), space, "/s").searcher == "grid"
    with pytest.raises(SystemExit):
        parser.parse_args(["--searcher", "grdi"])
    err = capsys.readouterr().err
    assert re.search(r"--searcher: invalid choice: '?grdi'? \(choose from .*tpe.*random.*grid", err)
