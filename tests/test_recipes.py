"""One recipe per method, and the ablation switches declared once: the CLI's flags, the experiment's runs and the
report's columns all come from `config.ABLATIONS`."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evaluation.experiment import DEFAULT_RUNS, REPORTED_ABLATIONS, RUNS
from jsa_retrieval.cli import cli
from jsa_retrieval.config import ABLATIONS, config_field
from jsa_retrieval.models import MODEL_NAMES, MODELS, AlignmentForward, create_model
from training.recipes import RECIPES, conceptual_partners, make_recipe, split_views

from conftest import tiny_config


def test_there_is_one_recipe_per_method_and_only_jsa_has_switches():
    assert tuple(RECIPES) == MODEL_NAMES == ("jsa", "ezvsl", "alignment")
    config = tiny_config()
    recipes = {name: make_recipe(name, config) for name in MODEL_NAMES}
    assert recipes["jsa"].ablations == ABLATIONS
    assert recipes["ezvsl"].ablations == () and recipes["alignment"].ablations == ()
    assert [recipes[name].views for name in MODEL_NAMES] == [1, 1, 2]
    assert recipes["alignment"].audio_shift == float("inf") and recipes["jsa"].audio_shift is None
    with pytest.raises(ValueError, match="unknown model"):
        make_recipe("clip", config)


def test_each_recipe_names_its_methods_model_class_and_an_objective_that_scores_its_output():
    """The model registry and the recipes are kept in step here (jsa_retrieval cannot import training): every
    method has exactly one recipe, and the recipe's model class is the one create_model builds for its name."""
    assert set(RECIPES) == set(MODELS)
    config = tiny_config()
    for name, recipe_class in RECIPES.items():
        assert recipe_class.model_class is MODELS[name] and recipe_class.model_class.model_name == name
        recipe = make_recipe(name, config)
        model = create_model(config, name)
        assert type(model) is recipe.model_class
        views = recipe.views
        items = 6  # over reciprocal_k + 1, so JSA's false-negative mining runs
        images = torch.rand(items * views, 3, config.data.image_size, config.data.image_size)
        spectrograms = torch.randn(items * views, 1, *config.data.spectrogram_shape)
        recipe.begin_epoch(items, 0)
        terms, _ = recipe.loss_terms(model(images, spectrograms), views, epoch_progress=1.0)
        assert torch.isfinite(terms["total"]) and terms["total"].requires_grad


def test_each_ablation_run_switches_off_exactly_its_field_and_the_full_run_none():
    base = tiny_config()
    for ablation in ABLATIONS:  # a base that has every switch off: the runs set them explicitly
        part, _, name = ablation.field.partition(".")
        setattr(getattr(base, part), name, False)
    full = RUNS["jsa"].configure(base, seed=3, epochs=2)
    assert all(config_field(full, ablation.field) is True for ablation in ABLATIONS)
    assert (full.train.seed, full.train.epochs) == (3, 2)
    for ablation in REPORTED_ABLATIONS:
        config = RUNS[ablation.run].configure(base, seed=0, epochs=None)
        assert {other.field: config_field(config, other.field) for other in ABLATIONS} == {
            other.field: other is not ablation for other in ABLATIONS}
        assert RUNS[ablation.run].label == ablation.label and ablation.run in DEFAULT_RUNS
    baseline = RUNS["ezvsl"].configure(base, seed=0, epochs=None)
    assert baseline.train.use_match is False  # baselines keep the base config as it is


def test_train_flags_come_from_the_ablation_list(monkeypatch, tmp_path):
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert all(ablation.flag in help_text for ablation in ABLATIONS)
    seen = {}

    def fake_train(data_dir, config, model_name, out_dir, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("training.trainer.train", fake_train)
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--config", "cpu", "--no-div", "--unshared-slots"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.train.use_div, config.model.share_initial_slots) == (False, False)
    assert (config.train.use_match, config.train.use_recon, config.train.use_false_negatives) == (True, True, True)


def test_the_reproduce_runs_option_takes_repeats_and_commas(monkeypatch, tmp_path):
    seen = {}

    def fake_run(data_dir, out_dir, seeds, config_name, epochs, minutes, names, *args, **kwargs):
        seen.update(seeds=seeds, names=names)
        raise SystemExit(0)

    monkeypatch.setattr("evaluation.experiment.run_seeds", fake_run)
    result = CliRunner().invoke(cli, ["eval", "reproduce", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--runs", "jsa,ezvsl", "--runs", "jsa_no_div", "--seeds", "0,1", "--seeds", "4"])
    assert result.exit_code == 0, result.output
    assert seen == {"seeds": [0, 1, 4], "names": ["jsa", "ezvsl", "jsa_no_div"]}


def test_conceptual_partners_are_a_random_one_of_the_top_k_neighbours_never_the_clip_itself():
    # four clusters of three near-identical rows: each row's top-2 neighbours are the two others of its cluster
    centres = torch.eye(4)
    bank = centres.repeat_interleave(3, dim=0) + 0.01 * torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    partners = conceptual_partners(bank, bank.flip(0), top_k=2, generator=torch.Generator().manual_seed(1))
    assert partners.shape == (12, 2)
    rows = np.arange(12)
    assert (partners[:, 0] != rows).all() and (partners[:, 0] // 3 == rows // 3).all()
    flipped_cluster = (11 - rows) // 3  # the audio bank is reversed: row r holds the vector of 11 - r
    assert (partners[:, 1] != rows).all() and ((11 - partners[:, 1]) // 3 == flipped_cluster).all()


def test_the_alignment_recipe_keeps_banks_and_draws_partners_from_the_previous_epoch():
    config = tiny_config()
    recipe = make_recipe("alignment", config)
    assert recipe.begin_epoch(6, epoch_seed=0) is None  # no previous epoch yet
    dim = config.model.projection_dim
    vectors = torch.randn(6, dim, generator=torch.Generator().manual_seed(2))
    for rows in ([0, 1, 2], [3, 4, 5]):
        recipe.after_step({"index": torch.tensor(rows)}, _alignment_output(vectors[rows]))
    recipe.end_epoch()
    assert torch.equal(recipe.banks["image"], vectors) and torch.equal(recipe.banks["audio"], -vectors)
    partners = recipe.begin_epoch(6, epoch_seed=1)
    assert partners.shape == (6, 2) and (partners != np.arange(6)[:, None]).all()
    assert recipe.banks["image"].abs().sum() == 0  # fresh banks for the new epoch


def _alignment_output(projection: torch.Tensor):
    """A stand-in forward output with just what the recipe's bank update reads."""
    class Output:
        image_projection = projection
        audio_projection = -projection
    return Output()


def test_split_views_cuts_every_tensor_field_into_its_views():
    fields = {"image_features": torch.arange(8.).reshape(4, 2), "image_projection": torch.arange(4.),
              "audio_vector": torch.arange(4.) * 10, "audio_projection": torch.arange(4.) * 100}
    stacked = AlignmentForward(**{name: fields.get(name, torch.zeros(4)) for name in
                                  AlignmentForward.__dataclass_fields__})
    first, second = split_views(stacked, 2)
    assert torch.equal(first.image_features, torch.tensor([[0., 1.], [2., 3.]]))
    assert torch.equal(second.audio_vector, torch.tensor([20., 30.]))
