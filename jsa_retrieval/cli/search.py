"""`jsar index`, `jsar query` and `jsar serve`: build an index, search it here, or serve it."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .options import EXAMPLE, checkpoint_option, device_option, is_quiet, workers_option


@click.command(help="Embed every clip of DATA_DIR into an HDF5 store and build FAISS indexes in OUT (or, with "
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
    from indexing.milvus_backend import MilvusOptionsError, index_target, push_store

    try:
        target = index_target(backend, bool(push), milvus_uri, milvus_prefix, milvus_index)
    except MilvusOptionsError as error:
        raise click.UsageError(str(error)) from None
    if push:
        if data_dir is not None or checkpoint is not None:
            raise click.UsageError("--push loads OUT's existing store: give no DATA_DIR and no --checkpoint")
        info = push_store(out_dir, target, progress=not is_quiet())
        _echo_milvus_push(info, out_dir)
        return
    if data_dir is None or checkpoint is None:
        raise click.UsageError("give DATA_DIR and --checkpoint (or --push milvus to load an existing store)")
    from indexing.embed import index_dataset

    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    summary = index_dataset(data_dir, checkpoint, out_dir, split=split, annotations=annotations,
                            batch_size=batch_size, num_workers=workers, device=device, factory=factory,
                            memory_budget=budget, draft=draft, milvus=target, progress=not is_quiet())
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


@click.command(help="Search an index by sound (--audio, --video) or by picture (--image), here or through a running "
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


@click.command(help="Serve an index over HTTP: the model and both FAISS indexes loaded once, a JSON API (OpenAPI page "
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
