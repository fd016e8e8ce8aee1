"""The trunk-feature cache: failures skipped and reported, a key that follows weights and file content,
memory-mapped parts that round-trip, reuse without recomputing, and real crops for the alignment baseline."""
from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_image, write_tone

from jsa_retrieval.clips import Clip
from jsa_retrieval.dataset import ClipDataset, FailureLog, load_image_tensor, make_loader
from jsa_retrieval.encoders import build_image_trunk, load_trunk_weights
from training import trunk_cache
from training.trunk_cache import cache_key, cached_trunk_features, file_signature, weights_digest

DEVICE = torch.device("cpu")


def make_clips(root: Path, count: int = 5) -> list[Clip]:
    audio = write_tone(root / "tone.wav")
    return [Clip(f"clip{i}", write_image(root / f"clip{i}.png", seed=i), audio) for i in range(count)]


def tiny_trunk(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_image_trunk("resnet18", width=4).eval()


def cache_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_undecodable_and_missing_images_are_skipped_counted_and_listed(tmp_path):
    clips = make_clips(tmp_path)
    (tmp_path / "clip1.png").write_bytes(b"not an image at all")
    clips[3] = Clip("clip3", tmp_path / "gone.png", clips[3].audio)
    config = tiny_config()
    features = cached_trunk_features(tiny_trunk(), clips, config, DEVICE, tmp_path / "cache", num_workers=0,
                                     progress=False)

    assert sorted(features.failures) == [1, 3]
    assert "cannot read image" in features.failures[1] and "gone.png" in features.failures[3]
    assert not np.any(features.views[1]) and np.all(np.abs(features.views[0]).sum(axis=(1, 2, 3)) > 0)
    dataset = ClipDataset(clips, config.data, train=True, image_features=features)
    failures = FailureLog()
    decoded = []
    for batch in make_loader(dataset, batch_size=5, num_workers=0):
        failures.add(batch)
        decoded += batch["index"].tolist()
    assert decoded == [0, 2, 4]
    assert len(failures) == 2 and sorted(clip_id for clip_id, _ in failures.failures) == ["clip1", "clip3"]
    assert "2 clip(s) skipped" in failures.summary()


def test_key_changes_when_the_weight_file_is_overwritten_at_the_same_path(tmp_path):
    clips = make_clips(tmp_path, 2)
    config = tiny_config()
    weights = tmp_path / "trunk.pth"
    keys = []
    for seed in (0, 1):
        torch.save(tiny_trunk(seed).state_dict(), weights)
        trunk = build_image_trunk("resnet18", width=4)
        load_trunk_weights(trunk, str(weights))
        keys.append(cache_key(clips, config, trunk.output_size(64), weights_digest(trunk)))
    assert keys[0] != keys[1]
    torch.save(tiny_trunk(0).state_dict(), weights)
    trunk = build_image_trunk("resnet18", width=4)
    load_trunk_weights(trunk, str(weights))
    assert cache_key(clips, config, trunk.output_size(64), weights_digest(trunk)) == keys[0]


def test_key_changes_when_a_file_is_edited_in_place_keeping_size_and_mtime(tmp_path):
    clips = make_clips(tmp_path, 2)
    config, digest = tiny_config(), weights_digest(tiny_trunk())
    before, signature = cache_key(clips, config, 2, digest), file_signature(clips[0].image)
    assert cache_key(clips, config, 2, digest) == before  # stable when nothing changed
    stat = clips[0].image.stat()
    content = bytearray(clips[0].image.read_bytes())
    content[-20] ^= 0xFF
    time.sleep(0.01)
    with open(clips[0].image, "r+b") as file:  # same inode, same size
        file.write(content)
    os.utime(clips[0].image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    after = clips[0].image.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    assert file_signature(clips[0].image) != signature
    assert cache_key(clips, config, 2, digest) != before


def test_key_changes_with_the_input_code_version(tmp_path, monkeypatch):
    clips = make_clips(tmp_path, 2)
    config, digest = tiny_config(), weights_digest(tiny_trunk())
    before = cache_key(clips, config, 2, digest)
    monkeypatch.setattr(trunk_cache, "TRUNK_INPUT_VERSION", trunk_cache.TRUNK_INPUT_VERSION + 1)
    assert cache_key(clips, config, 2, digest) != before


def test_memory_mapped_cache_round_trips_the_trunk_output_of_both_views(tmp_path):
    clips = make_clips(tmp_path, 3)
    config, trunk = tiny_config(), tiny_trunk()
    features = cached_trunk_features(trunk, clips, config, DEVICE, tmp_path / "cache", num_workers=0,
                                     progress=False)
    images = torch.stack([load_image_tensor(clip.image, config.data) for clip in clips])
    with torch.no_grad():
        expected = torch.stack([trunk(images), trunk(images.flip(-1))], dim=1).half().numpy()
    assert isinstance(features.views, np.memmap) and features.views.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(features.views), expected)
    test_item = ClipDataset(clips, config.data, image_features=features)[2]["image"]
    torch.testing.assert_close(test_item, torch.from_numpy(expected[2, 0]).float())

    reread = cached_trunk_features(trunk, clips, config, DEVICE, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(np.asarray(reread.views), expected)
    pickled = pickle.dumps(reread)  # workers get the file's path, not a copy of the features
    assert len(pickled) < expected.nbytes
    np.testing.assert_array_equal(np.asarray(pickle.loads(pickled).views), expected)


def test_a_second_run_reuses_the_cache_and_a_half_written_one_is_recomputed(tmp_path, monkeypatch):
    clips = make_clips(tmp_path, 3)
    config, trunk, cache = tiny_config(), tiny_trunk(), tmp_path / "cache"
    first = cached_trunk_features(trunk, clips, config, DEVICE, cache, num_workers=0, progress=False)
    written = cache_files(cache)
    assert len(written) == 2 and all(name.endswith(("-views.npy", "-views.json")) for name in written)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the trunk ran again although its features were cached")

    with monkeypatch.context() as patch:
        patch.setattr(trunk_cache, "compute_trunk_features", must_not_run)
        again = cached_trunk_features(trunk, clips, config, DEVICE, cache, progress=False)
    np.testing.assert_array_equal(np.asarray(again.views), np.asarray(first.views))

    meta = next(cache.glob("*.json"))
    meta.unlink()  # as if killed between the array's rename and its list of failures
    rebuilt = cached_trunk_features(trunk, clips, config, DEVICE, cache, num_workers=0, progress=False)
    np.testing.assert_array_equal(np.asarray(rebuilt.views), np.asarray(first.views))
    assert cache_files(cache) == written


def test_an_interrupted_computation_leaves_nothing_behind(tmp_path, monkeypatch):
    clips = make_clips(tmp_path, 3)
    cache = tmp_path / "cache"

    def interrupted(trunk, clips, config, device, outputs, *args, **kwargs):
        for path in outputs.values():
            path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(trunk_cache, "compute_trunk_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_trunk_features(tiny_trunk(), clips, tiny_config(), DEVICE, cache, progress=False)
    assert cache_files(cache) == []


def test_crops_are_cached_beside_the_views_and_make_two_different_views(tmp_path, monkeypatch):
    clips = make_clips(tmp_path, 4)
    config, trunk, cache = tiny_config(), tiny_trunk(), tmp_path / "cache"
    plain = cached_trunk_features(trunk, clips, config, DEVICE, cache, num_workers=0, progress=False)
    computed = []
    original = trunk_cache.compute_trunk_features
    monkeypatch.setattr(trunk_cache, "compute_trunk_features",
                        lambda *args, **kwargs: computed.append(sorted(args[4])) or original(*args, **kwargs))
    features = cached_trunk_features(trunk, clips, config, DEVICE, cache, num_workers=0, progress=False, crops=4)
    assert computed == [["crops"]]  # the views were reused; only the crops were computed
    assert features.crops.shape[:2] == (4, 4)
    np.testing.assert_array_equal(np.asarray(features.views), np.asarray(plain.views))
    crops = np.asarray(features.crops, dtype=np.float32)
    assert all(not np.array_equal(crops[0, a], crops[0, b]) for a in range(4) for b in range(a))

    dataset = ClipDataset(clips, config.data, train=True, views=2, image_features=features)
    for index in range(len(clips)):
        item = dataset[index]
        assert not torch.equal(item["image"], item["image_1"])
        assert any(torch.equal(item["image"], torch.from_numpy(crops[index, k])) for k in range(4))
    jsa_item = ClipDataset(clips, config.data, train=True, image_features=features)[0]["image"]
    assert any(torch.equal(jsa_item, torch.from_numpy(crops[0, k])) for k in range(4))  # one view: a crop too

    reseeded = cached_trunk_features(trunk, clips, config, DEVICE, cache, num_workers=0, progress=False, crops=4,
                                     seed=1)
    assert not np.array_equal(np.asarray(reseeded.crops), np.asarray(features.crops))  # another seed, other crops
    again = cached_trunk_features(trunk, clips, config, DEVICE, cache, num_workers=0, progress=False, crops=4)
    np.testing.assert_array_equal(np.asarray(again.crops), np.asarray(features.crops))  # same seed, same crops


@pytest.mark.parametrize("model_name", ["jsa", "alignment"])
def test_training_on_the_cache_skips_an_undecodable_frame_and_draws_seeded_crops(tmp_path, model_name):
    from jsa_retrieval.synth import SynthConfig, generate
    from training.trainer import split_train_val, train

    data = tmp_path / "data"
    generate(data, SynthConfig(n_clips=24, seed=0, image_size=64, seconds=1.0), progress=False)
    broken = split_train_val(data)[0][0].image
    broken.write_bytes(b"broken")
    config = tiny_config(epochs=1)
    config.model.freeze_image, config.model.image_weights = "all", "none"
    config.train.seed = 3
    cache = tmp_path / "cache"
    result = train(data, config, model_name, tmp_path / "run", device="cpu", progress=False, feature_cache=cache)
    assert result.skipped == 1 and result.history[0]["steps"] >= 1
    names = cache_files(cache)
    assert sum(name.endswith("-views.npy") for name in names) == 2  # train and val
    crops = f"-crops{config.train.cached_crops}-seed3.npy"
    assert sum(name.endswith(crops) for name in names) == 1  # train only, every method, the run's seed


def test_a_rank_that_may_not_write_computes_into_a_temporary_folder(tmp_path):
    clips = make_clips(tmp_path, 2)
    cache = tmp_path / "cache"
    features = cached_trunk_features(tiny_trunk(), clips, tiny_config(), DEVICE, cache, num_workers=0,
                                     progress=False, write=False)
    assert not cache.exists() or cache_files(cache) == []
    assert np.abs(np.asarray(features.views, np.float32)).sum() > 0
    assert features.images(1, 1, train=False)[0].shape == features.views.shape[2:]
