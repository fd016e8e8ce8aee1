"""`jsar index` / `jsar query` / `jsar localize` on a tiny synthetic set with a small random model."""
import json
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner
from PIL import Image

from indexing.embed import index_dataset
from indexing.engine import Engine
from jsa_retrieval.metrics import PresenceMix
from indexing.store import EmbeddingStore, FingerprintMismatch, StoreWriter
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.cli import cli
from jsa_retrieval.dataset import load_image_tensor, load_spectrogram
from jsa_retrieval.localize_files import localize_pair
from jsa_retrieval.maps import localize
from jsa_retrieval.pictures import overlay_picture, spectrogram_picture
from jsa_retrieval.synth import SynthConfig, generate
from helpers import brute_force_top_k, tiny_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    data = root / "data"
    generate(data, SynthConfig(n_clips=20, seed=1, image_size=64, seconds=1.0), progress=False)
    (data / "audio" / "synth_000007.wav").write_bytes(b"RIFF broken")
    checkpoint = tiny_checkpoint(root / "model.pt")
    summary = index_dataset(data, checkpoint, root / "index", batch_size=6, num_workers=0, progress=False)
    return root, data, checkpoint, summary


def read_store(index_dir):
    with h5py.File(index_dir / "store.h5") as handle:
        return {key: handle[key][()] for key in handle}


def test_index_embeds_every_clip_and_reports_the_corrupt_one(setup):
    root, _, _, summary = setup
    assert summary.clips_found == 20 and summary.rows == 19 and summary.skipped == 1
    assert "synth_000007" in (root / "index" / "skipped.tsv").read_text()
    with EmbeddingStore.open(root / "index") as store:
        assert len(store) == 19 and "synth_000007" not in store.ids()
        vectors = store.read_rows("image_vectors", np.arange(19))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert (root / "index" / "image.faiss").is_file() and (root / "index" / "audio.faiss").is_file()


def test_index_resumes_after_a_crash_to_the_same_store(setup, monkeypatch):
    root, data, checkpoint, _ = setup
    calls = {"n": 0}
    original = StoreWriter.write

    def crash_on_second_batch(self, records, positions):
        calls["n"] += 1
        if calls["n"] == 2:
            self.flush()
            raise KeyboardInterrupt("simulated kill")
        original(self, records, positions)

    monkeypatch.setattr(StoreWriter, "write", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        index_dataset(data, checkpoint, root / "crashed", batch_size=6, num_workers=0, progress=False)
    monkeypatch.setattr(StoreWriter, "write", original)
    resumed = index_dataset(data, checkpoint, root / "crashed", batch_size=6, num_workers=0, progress=False)
    assert resumed.already_done == 6 and resumed.rows == 19
    clean, again = read_store(root / "index"), read_store(root / "crashed")
    assert clean.keys() == again.keys()
    for key in clean:
        np.testing.assert_array_equal(clean[key], again[key], err_msg=key)


def test_audio_query_writes_overlays_sheet_and_json(setup):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    result = engine.search_audio(data / "audio" / "synth_000003.wav", k=5)
    scores = [hit.score for hit in result.hits]
    assert len(result.hits) == 5 and scores == sorted(scores, reverse=True)
    json_path = engine.write_outputs(result, root / "hits")
    saved = json.loads(json_path.read_text())
    assert [h["id"] for h in saved["hits"]] == [h.id for h in result.hits]
    for hit in saved["hits"]:
        assert Image.open(hit["picture"]).size == Image.open(hit["image_path"]).size == (64, 64)
    assert Image.open(saved["contact_sheet"]).width > 64


def test_hits_under_the_presence_cut_are_marked_and_drawn_without_a_map(setup, tmp_path):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    assert engine.presence_cut is None  # an uncalibrated checkpoint: no claim either way
    result = engine.search_audio(data / "audio" / "synth_000003.wav", k=4)
    engine.write_outputs(result, tmp_path / "unknown")
    assert all(hit.source_visible is None and isinstance(hit.presence, float) for hit in result.hits)
    presences = sorted(hit.presence for hit in result.hits)
    engine.presence_cut = (presences[1] + presences[2]) / 2  # two hits above the cut, two below
    saved = json.loads(engine.write_outputs(result, tmp_path / "cut").read_text())
    visible = [hit["source_visible"] for hit in saved["hits"]]
    assert sorted(visible) == [False, False, True, True]
    for hit in saved["hits"]:
        assert hit["source_visible"] == (hit["presence"] > engine.presence_cut)
        picture = np.asarray(Image.open(hit["picture"]).convert("RGB")).astype(float)
        original = np.asarray(Image.open(hit["image_path"]).convert("RGB")).astype(float)
        dimmed_corner = np.allclose(picture[:4, :4], np.round(0.35 * original[:4, :4] + 0.65 * 128), atol=1)
        assert dimmed_corner == (not hit["source_visible"])


def test_audio_search_with_maps_encodes_the_query_once_and_the_hits_in_one_batch(setup):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    calls = {"audio": [], "image": []}
    encode_audio, encode_image = engine.model.encode_audio, engine.model.encode_image
    engine.model.encode_audio = lambda x: calls["audio"].append(len(x)) or encode_audio(x)
    engine.model.encode_image = lambda x: calls["image"].append(len(x)) or encode_image(x)
    result = engine.search_audio(data / "audio" / "synth_000003.wav", k=5)
    engine.write_outputs(result, root / "hits_once")
    assert calls == {"audio": [1], "image": [5]}


def tile(sheet_path, index, size=192):
    """The top-left `size` x `size` pixels of the `index`-th tile of a contact sheet's first row (5 columns)."""
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    return sheet[:size, index * size:(index + 1) * size]


def thumbnail(picture, size=192):
    """A picture as contact_sheet pastes it: `size` wide, its aspect kept, cut to the tile's first `size` rows."""
    return np.asarray(picture.convert("RGB").resize((size, int(size * picture.height / picture.width))))[:size]


def test_contact_sheets_show_the_query_first(setup, tmp_path):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    frame = data / "frames" / "synth_000004.jpg"
    sounds = engine.search_image(frame, k=3)
    engine.write_outputs(sounds, tmp_path / "sounds")
    query_tile = np.asarray(Image.open(frame).convert("RGB").resize((192, 192)))
    np.testing.assert_array_equal(tile(sounds.contact_sheet, 0), query_tile)
    first_hit = thumbnail(Image.open(sounds.hits[0].picture))
    np.testing.assert_array_equal(tile(sounds.contact_sheet, 1)[:len(first_hit)], first_hit)  # one tile along
    sound = data / "audio" / "synth_000003.wav"
    images = engine.search_audio(sound, k=5)
    engine.write_outputs(images, tmp_path / "images")
    attention = images.query_side.time_attention[0].numpy()
    spectrogram = spectrogram_picture(engine.audio_input(sound)[0].numpy(), attention)
    expected = thumbnail(spectrogram)
    np.testing.assert_array_equal(tile(images.contact_sheet, 0)[:len(expected)], expected)
    tall = int(192 * spectrogram.height / spectrogram.width)  # the query's tile sets the row height
    assert Image.open(images.contact_sheet).height == 2 * (max(192, tall) + 18)  # query + 5 hits: 2 rows

def test_hit_map_equals_localize_on_the_same_pair(setup):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    audio_path = data / "audio" / "synth_000003.wav"
    hit = engine.search_audio(audio_path, k=3).hits[1]
    on_demand = engine.hit_map(engine.embed_audio(audio_path), hit.image_path)
    image = load_image_tensor(hit.image_path, engine.config.data).unsqueeze(0)
    audio = load_spectrogram(audio_path, engine.config.data).unsqueeze(0)
    direct = localize(engine.model, image, audio).full[0].numpy()
    np.testing.assert_allclose(on_demand, direct, atol=1e-5)


def test_image_query_returns_the_exact_top_sounds_with_thumbnails(setup):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    result = engine.search_image(data / "frames" / "synth_000004.jpg", k=3)
    engine.write_outputs(result, root / "sounds")
    query = engine.embed_image(data / "frames" / "synth_000004.jpg").vector.numpy()
    with EmbeddingStore.open(root / "index") as store:
        ids, sounds = store.ids(), store.read_rows("audio_vectors", np.arange(len(store)))
    scores, rows = brute_force_top_k(sounds, query, 3)
    assert [hit.id for hit in result.hits] == [ids[row] for row in rows[0]]
    np.testing.assert_allclose([hit.score for hit in result.hits], scores[0], atol=1e-5)
    assert all(Image.open(hit.picture).height == 160 + 32 for hit in result.hits)


def write_video(path, wav_path, frames: int = 5, size: int = 32):
    """A .mkv whose sound track is `wav_path`'s samples (lossless PCM) under a few grey mpeg4 frames."""
    samples, rate = soundfile.read(wav_path, dtype="int16")
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=5)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=rate)
        audio.layout = "mono"
        for k in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 40 * k, np.uint8),
                                                                  format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*audio.encode(frame), *audio.encode()]:
            container.mux(packet)
    return path


def test_cli_query_by_video_searches_with_its_sound_track(setup, tmp_path):
    root, data, _, _ = setup
    wav = data / "audio" / "synth_000002.wav"
    video = write_video(tmp_path / "clip.mkv", wav)
    runner = CliRunner()
    answers = {flag: runner.invoke(cli, ["query", "--index", str(root / "index"), flag, str(path), "-k", "4",
                                         "--json"]) for flag, path in (("--video", video), ("--audio", wav))}
    assert all(answer.exit_code == 0 for answer in answers.values()), answers["--video"].output
    by_video, by_audio = (json.loads(answers[flag].output) for flag in ("--video", "--audio"))
    assert by_video["kind"] == "video" and by_audio["kind"] == "audio"
    assert [hit["id"] for hit in by_video["hits"]] == [hit["id"] for hit in by_audio["hits"]]
    np.testing.assert_allclose([hit["score"] for hit in by_video["hits"]],
                               [hit["score"] for hit in by_audio["hits"]], atol=1e-4)
    with pytest.raises(ValueError, match="not a video file"):
        Engine.open(root / "index").search_video(wav, k=4)


def test_another_models_checkpoint_is_refused(setup):
    root, _, _, _ = setup
    other = tiny_checkpoint(root / "other.pt", seed=1)
    with pytest.raises(FingerprintMismatch, match="not the model"):
        Engine.open(root / "index", checkpoint=other)


def test_localize_pair_draws_the_refined_map_of_localize_over_the_image(setup, tmp_path):
    _, data, checkpoint, _ = setup
    image_path, audio_path = data / "frames" / "synth_000001.jpg", data / "audio" / "synth_000001.wav"
    out = localize_pair(image_path, audio_path, checkpoint, tmp_path / "o.png", iqr=True)
    model, config, _ = load_model(checkpoint)
    image = load_image_tensor(image_path, config.data).unsqueeze(0)
    audio = load_spectrogram(audio_path, config.data).unsqueeze(0)
    drawn = np.asarray(Image.open(out).convert("RGB"))
    refined = overlay_picture(Image.open(image_path), localize(model, image, audio, iqr=True).coarse[0].numpy())
    plain = overlay_picture(Image.open(image_path), localize(model, image, audio).coarse[0].numpy())
    assert drawn.shape == (64, 64, 3)
    np.testing.assert_array_equal(drawn, np.asarray(refined.convert("RGB")))
    assert not np.array_equal(drawn, np.asarray(plain.convert("RGB")))  # iqr=True is not ignored


def test_cli_query_prints_a_table_and_bad_input_is_one_line(setup, tmp_path):
    root, data, _, _ = setup
    runner = CliRunner()
    ok = runner.invoke(cli, ["query", "--index", str(root / "index"), "--audio",
                             str(data / "audio" / "synth_000002.wav"), "-k", "4", "--json"])
    assert ok.exit_code == 0, ok.output
    assert len(json.loads(ok.output)["hits"]) == 4
    both = runner.invoke(cli, ["query", "--index", str(root / "index"), "--audio", str(data / "audio" / "synth_000002.wav"),
                               "--image", str(data / "frames" / "synth_000002.jpg")])
    assert both.exit_code != 0 and "exactly one" in both.output


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["jsa", "ezvsl", "alignment"])
def test_every_trained_model_indexes_and_answers_both_queries(setup, tmp_path, model_name):
    """The checkpoint `jsar train` writes for each model goes through index -> query -> maps (the alignment
    baseline retrieves with its projection_dim vectors, not embed_dim)."""
    from training.trainer import train

    from conftest import tiny_config

    _, data, _, _ = setup
    config = tiny_config(epochs=1)
    run = train(data, config, model_name, tmp_path / "run", device="cpu", progress=False)
    summary = index_dataset(data, run.best_path, tmp_path / "index", batch_size=8, num_workers=0, progress=False)
    assert summary.rows == 19
    engine = Engine.open(tmp_path / "index")
    sounds = engine.search_image(data / "frames" / "synth_000004.jpg", k=3)
    pictures = engine.search_audio(data / "audio" / "synth_000003.wav", k=3)
    assert len(sounds.hits) == len(pictures.hits) == 3
    saved = json.loads(engine.write_outputs(pictures, tmp_path / "hits").read_text())
    assert all(Image.open(hit["picture"]).size == (64, 64) for hit in saved["hits"])


def test_a_calibrated_presence_mix_scores_each_hit_by_presence_and_retrieval_similarity(setup, tmp_path):
    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    sound = data / "audio" / "synth_000003.wav"
    plain = engine.search_audio(sound, k=4)
    engine.write_outputs(plain, tmp_path / "plain")  # draws each hit, scoring its presence
    raw = {hit.id: hit.presence for hit in plain.hits}
    engine.presence_mix = PresenceMix(weight=0.5, presence_mean=0.1, presence_std=0.2, similarity_mean=0.3,
                                      similarity_std=0.4)
    mixed = engine.search_audio(sound, k=4)
    engine.write_outputs(mixed, tmp_path / "mixed")
    assert len(set(raw.values())) > 1
    for hit in mixed.hits:
        # the hit's score is the retrieval cosine of the store's vectors, which the mix reads from the same encoding
        expected = 0.5 * (raw[hit.id] - 0.1) / 0.2 + 0.5 * (hit.score - 0.3) / 0.4
        assert hit.presence == pytest.approx(expected, abs=1e-4)


def test_a_presence_mix_by_picture_standardises_each_hit_over_the_reference_sounds(setup, tmp_path):
    from jsa_retrieval.metrics import PictureStats
    from jsa_retrieval.models import AudioSide

    root, data, _, _ = setup
    engine = Engine.open(root / "index")
    sound = data / "audio" / "synth_000003.wav"
    plain = engine.search_audio(sound, k=4)
    engine.write_outputs(plain, tmp_path / "plain")
    raw = {hit.id: hit.presence for hit in plain.hits}
    reference = AudioSide.cat([engine.embed_audio(data / "audio" / f"synth_00000{n}.wav") for n in (0, 1, 5, 8)])
    engine.presence_mix = PresenceMix(weight=0.0, presence_mean=0.0, presence_std=1.0, similarity_mean=0.0,
                                      similarity_std=1.0, by_picture=True)
    engine.presence_reference = AudioSide.from_reference_state(reference.reference_state())
    mixed = engine.search_audio(sound, k=4)
    engine.write_outputs(mixed, tmp_path / "mixed")
    images = torch.stack([load_image_tensor(Path(hit.image_path), engine.config.data) for hit in mixed.hits])
    with torch.no_grad():
        side = engine.encode_image(images)
        stats = PictureStats.of(engine.model.presence_matrix(reference, side).numpy(),
                                (reference.vector @ side.vector.T).numpy())
    for column, hit in enumerate(mixed.hits):
        # weight 0, global mean 0 and std 1: the hit's raw presence as a z-score of its picture's reference column
        expected = (raw[hit.id] - stats.presence_mean[column]) / stats.presence_std[column]
        assert hit.presence == pytest.approx(expected, abs=1e-3)
    assert len({round(hit.presence, 4) for hit in mixed.hits}) > 1
    with pytest.raises(ValueError, match="keeps no reference sounds"):
        Engine(engine.index_dir, engine.model, engine.config, engine.indexes, engine.device, None, engine.presence_mix)


def test_contact_sheet_captions_keep_the_score_and_the_not_visible_mark():
    from PIL import ImageDraw

    from jsa_retrieval.pictures import contact_sheet, fitted_caption

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    long = "#7 large_mammal_with_a_long_class_name 0.504 not visible"
    fitted = fitted_caption(draw, long, 186)
    assert draw.textlength(fitted) <= 186 and fitted.startswith("#7 ") and fitted.endswith("0.504 not visible")
    assert ".." in fitted and fitted_caption(draw, "#1 dog 0.5", 186) == "#1 dog 0.5"
    assert draw.textlength(fitted_caption(draw, long, 20)) <= 20  # even a tile too narrow for the end
    sheet = contact_sheet([Image.new("RGB", (64, 64), (255, 0, 0))] * 2, ["query", long])
    assert sheet.size == (5 * 192, 192 + 18)
