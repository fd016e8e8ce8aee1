"""`jsar eval`: evaluation reports, and the paper's experiment."""
from __future__ import annotations

from pathlib import Path

import click

from ..config import ABLATIONS
from .options import EXAMPLE, device_option, is_quiet, list_option, workers_option


@click.group(help="Evaluation reports: localization (cIoU/AP50, AUC, AVSBench mIoU/F), retrieval (Recall@K), "
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
    from evaluation.reports import report_tables

    click.echo(report_tables(out_dir) + f"\n\nreport files in {out_dir}")


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
@click.option("--negatives", is_flag=True, help="Also score SLAVC's extended protocol: each picture paired with the "
                                                "sound of a clip of a class not in it; AP and max-F1 over "
                                                "confidence thresholds (needs class labels).")
@click.option("--negatives-seed", default=0, show_default=True, help="Seed of the negative pairs.")
def eval_localization(data_dir: Path, checkpoint: Path, split: str | None, annotations: Path | None, threshold: str,
                      upsample_mode: str, ogl: str | None, ogl_weights: Path | None, iqr_alpha: float | None,
                      out_dir: Path, workers: int, group_by: str | None, negatives: bool, negatives_seed: int) -> None:
    from evaluation.localization import evaluate_localization, negatives_lines
    from evaluation.reports import write_report

    report = evaluate_localization(checkpoint, data_dir, split=split, annotations=annotations, threshold=threshold,
                                   upsample_mode=upsample_mode, ogl=ogl, ogl_weights=ogl_weights,
                                   iqr_alpha=iqr_alpha, num_workers=workers, group_by=group_by,
                                   negatives=negatives, negatives_seed=negatives_seed)
    _echo_report(write_report(report, out_dir, f"Localization: {data_dir}"))
    if negatives:
        click.echo(negatives_lines(report))


@eval_group.command("presence", help="How a checkpoint's presence score and calibrated cut sort each sound's top-k "
                    "search hits over a whole split (present: the picture sounds the sound's class; absent: it holds "
                    "no object of that class); from one collect pass, whatever the batch size." + EXAMPLE
                    + "jsar eval presence runs/real/calibrated.pt data/realsound --split test -k 10")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Hits per sound.")
@workers_option()
@device_option()
def eval_presence(checkpoint: Path, data_dir: Path, split: str, k: int, workers: int, device: str | None) -> None:
    from evaluation.presence import hit_presence, presence_lines

    click.echo(presence_lines(hit_presence(checkpoint, data_dir, split, k, device, num_workers=workers),
                              checkpoint, split, k))


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
    report = evaluate_generalisation(resolved, data_dir, list_option((splits,)), k, device, progress=not is_quiet())
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


@eval_group.command("map-variants", help="AP50 (fixed 0.6) of a checkpoint's map variants on a split, overall and "
                    "by scene kind: how the settings that only change inference (the map, the fusion exponent, the "
                    "slot-logit scale, IQR's alpha) move it, all from one encoding pass; how the `real` preset's map "
                    "was chosen on realsound val." + EXAMPLE
                    + "jsar eval map-variants runs/real/best.pt data/realsound --split val")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="val", show_default=True)
@device_option()
def eval_map_variants(checkpoint: Path, data_dir: Path, split: str, device: str | None) -> None:
    from evaluation.map_variants import boxed_clips, score_variants, variants_table

    clips = boxed_clips(data_dir, split)
    if not clips:
        raise click.BadParameter(f"no clip of {split} has boxes", param_hint="DATA_DIR")
    click.echo(variants_table(score_variants(checkpoint, clips, device), checkpoint, split))


@eval_group.command("figures", help="Several checkpoints' maps side by side on the same clips, as one PNG (the "
                    "README's docs/realsound_maps.png); each model runs once over the clips through the collect "
                    "stage, ground truth outlined." + EXAMPLE
                    + "jsar eval figures data/realsound docs/realsound_maps.png --model \"JSA=runs/jsa/best.pt\" "
                      "--model \"EZ-VSL=runs/ezvsl/best.pt\" --field silent_object_in_view")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True, required=True, help="LABEL=CHECKPOINT, in column order.")
@click.option("--split", default="test", show_default=True)
@click.option("--clips", "count", default=6, show_default=True)
@click.option("--field", help="Only clips whose annotation FIELD reads --value (e.g. silent_object_in_view).")
@click.option("--value", default="true", show_default=True)
def eval_figures(data_dir: Path, out_path: Path, models: tuple[str, ...], split: str, count: int, field: str | None,
                 value: str) -> None:
    from evaluation.figures import compare_maps_figure, pick_clips

    from ..clips import read_dataset

    pairs = dict(model.split("=", 1) for model in models if "=" in model)
    if len(pairs) != len(models):
        raise click.BadParameter("each --model is LABEL=CHECKPOINT", param_hint="--model")
    clips = pick_clips(read_dataset(data_dir, split).clips, count, field, value)
    if not clips:
        raise click.BadParameter(f"no clip of {split} with ground truth matches", param_hint="--field")
    click.echo(compare_maps_figure(pairs, clips, out_path))


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
@click.option("--lrs", multiple=True, help="A learning-rate ladder, comma-separated (e.g. 1.5e-4,5e-4,1.5e-3): each "
              "method first trains once per rate and seed and keeps the rate with the best val score averaged over "
              "the seeds (OUT/schedule/; its runs are the rows); without it every run trains at the config's rate.")
@click.option("--patience", type=click.IntRange(0), default=0, show_default=True,
              help="Stop a run after this many epochs without a better val score (at least 1 with --lrs).")
@device_option()
def eval_reproduce(data_dir: Path, out_dir: Path, config_name: str, epochs: int | None,
                   minutes_per_run: float | None, seed: int, seeds: tuple[str, ...], runs: tuple[str, ...],
                   threshold: str, lrs: tuple[str, ...], patience: int, device: str | None) -> None:
    from evaluation.experiment import DEFAULT_RUNS, run_experiment, run_seeds

    quiet = is_quiet()

    names = list_option(runs) or list(DEFAULT_RUNS)
    try:
        ladder = [float(value) for value in list_option(lrs)]
    except ValueError as error:
        raise click.BadParameter("takes numbers separated by commas", param_hint="--lrs") from error
    if seeds:
        try:
            seed_list = [int(value) for value in list_option(seeds)]
        except ValueError as error:
            raise click.BadParameter("takes integers separated by commas", param_hint="--seeds") from error
        if len(set(seed_list)) != len(seed_list):  # a seed twice would count one run twice in mean ± std
            raise click.BadParameter(f"names a seed twice: {','.join(map(str, seed_list))}", param_hint="--seeds")
        _, path = run_seeds(data_dir, out_dir, seed_list, config_name, epochs, minutes_per_run, names, threshold,
                            progress=not quiet, device=device, lrs=ladder, patience=patience)
        click.echo(path.read_text())
        return
    report = run_experiment(data_dir, out_dir, config_name, epochs, minutes_per_run, seed, names, threshold,
                            progress=not quiet, device=device, lrs=ladder, patience=patience)
    click.echo(report.files["markdown"].read_text())
