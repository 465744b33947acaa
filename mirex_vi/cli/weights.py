"""The ``weights`` commands: list, verify, copy, import/export, recalibrate, whiten and blend
packages.

Only click is imported here; torch and the package code load inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import EXIT_OUTPUT, interruptible, scoring_changes, scoring_options
from .common import fail as _fail


@click.group("weights")
def weights_group() -> None:
    """List, verify, copy, import, export and derive weight packages.

    \b
    `import` and `export` are one command under two names: each turns a .pth checkpoint
    (the authors' model_checkpoint.pth, or a training run's best.pt / last.pt) into a
    package of the inference weights, its config and provenance.
    """


@weights_group.command("list")
def weights_list() -> None:
    """Show the packages under the weights folder."""
    from ..model.weights import DEFAULT_WEIGHTS, list_packages, weights_root

    packages = list_packages()
    if not packages:
        click.echo(f"no weight packages under {weights_root()}")
    for folder in packages:
        marker = " (default)" if folder.name == DEFAULT_WEIGHTS else ""
        click.echo(f"{folder.name}{marker}\t{folder}")


@weights_group.command("verify")
@click.argument("names", nargs=-1)
def weights_verify(names) -> None:
    """Check the sha256 of NAMES (folders or names; default: every package), and that each
    loads: config fields in range, tensors readable, the model built."""
    from ..model.weights import list_packages, load_package, resolve_weights

    specs = names or list_packages()
    if not specs:
        _fail("no weight packages to verify")
    failed = 0
    for spec in specs:
        try:
            click.echo(f"OK\t{Path(spec).name}\t{load_package(resolve_weights(spec)).sha256}")
        except ValueError as err:
            click.echo(f"FAILED\t{Path(spec).name}\t{err}", err=True)
            failed += 1
    if failed:
        _fail(f"{failed} package(s) failed verification")


def _package_command(verb: str, help_text: str):
    @weights_group.command(verb, help=help_text)
    @click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--name", required=True, help="Package name (a folder under --root).")
    @click.option("--root", type=click.Path(file_okay=False, path_type=Path),
                  help="Where to create the package [default: the weights folder].")
    @click.option("--card", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="MODEL_CARD.md to ship [default: generated from the checkpoint].")
    def command(checkpoint, name, root, card) -> None:
        from ..model.packaging import import_checkpoint

        _write_package_at(root, name, lambda folder: import_checkpoint(checkpoint, folder, card))

    return command


def _write_package_at(root: Path | None, name: str, write) -> None:
    """Run ``write(folder)`` for the package NAME under ROOT (default: the weights folder),
    reporting its sha256, or a bad source or an unwritable folder as a clean error."""
    from ..model.weights import weights_root

    if name in ("", ".", "..") or "/" in name:
        _fail(f"{name!r}: not a package name (a folder name under the weights folder or --root)")
    folder = (root or weights_root()) / name
    try:
        sha = write(folder)
    except ValueError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{folder}: cannot write the package ({err.strerror or err})", EXIT_OUTPUT)
    click.echo(f"wrote {folder} (model.safetensors sha256 {sha})")


def _tempo_scales(ctx, param, value: str | None) -> tuple[float, ...] | None:
    """``--tempo-scales 0.7,1,1.4`` as a tuple of floats (ranges are the config's check)."""
    from ..config import parse_tempo_scales

    if value is None:
        return None
    try:
        return parse_tempo_scales(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@weights_group.command("copy")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Where to create the copy [default: the weights folder].")
@click.option("--tempo-scales", callback=_tempo_scales, metavar="S1,S2,...",
              help="Embed at each of these tempi and average the embeddings, e.g. 0.7,1,1.4 "
                   "(1: one plain pass) [default: the source's].")
@scoring_options
def weights_copy(source, name, root, tempo_scales, **scoring) -> None:
    """Copy the package SOURCE (a folder) as NAME: its config takes the new name and its
    checksums follow; --tempo-scales changes how it embeds and the scoring options how it
    scores pairs, its recipe (the weights stay the same)."""
    from ..model.packaging import copy_package

    changes = scoring_changes(**scoring)
    _write_package_at(root, name, lambda folder: copy_package(source, folder, tempo_scales,
                                                              changes))


_package_command("import", "Turn the authors' model_checkpoint.pth into a weight package "
                           "(the same command as `weights export`).")
_package_command("export", "Turn a training checkpoint (best.pt/last.pt) into a weight package "
                           "(the same command as `weights import`).")


def _derived_command(verb: str, metadata_help: str):
    """Declare ``weights VERB``: a copy of the package SOURCE with some weights measured
    anew on the tracks of --metadata, written as NAME (the options both such commands take;
    their own come after)."""
    shared = [
        click.argument("source"),
        click.option("--metadata", required=True, help=metadata_help,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--features-dir", required=True,
                     type=click.Path(exists=True, file_okay=False, path_type=Path)),
        click.option("--name", required=True, help="Package name (a folder under --root)."),
        click.option("--root", type=click.Path(file_okay=False, path_type=Path),
                     help="Where to create the package [default: the weights folder]."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True),
    ]

    def decorate(command):
        for option in reversed(shared):
            command = option(command)
        return weights_group.command(verb)(command)

    return decorate


def _write_derived(root: Path | None, name: str, device: str, make, done: str,
                   metadata: Path) -> None:
    """Write the package NAME with ``make(folder, device) -> (sha256, tracks used)``; report
    ``done`` and how many tracks of ``metadata`` it used."""
    from ..core.runtime import resolve_device

    def write(folder: Path) -> str:
        sha, used = make(folder, resolve_device(device))
        click.echo(f"{done} {used} track{'s' * (used != 1)} of {metadata}")
        return sha

    with interruptible("no package written"):
        _write_package_at(root, name, write)


@_derived_command("recalibrate", "Light JSON whose versions to average over (training data, "
                                 "not the test set).")
@click.option("--tracks", type=click.IntRange(1), default=4096, show_default=True,
              help="Whole tracks drawn from --metadata (all, if it has fewer).")
def weights_recalibrate(source, metadata, features_dir, name, root, seed, device, tracks) -> None:
    """Re-estimate the BatchNorm statistics of the package SOURCE (a folder or name) on clean
    whole tracks, and write the result as NAME ("precise BN"; the weights are unchanged)."""
    from ..train.recalibrate import recalibrate_package

    _write_derived(root, name, device, lambda folder, dev: recalibrate_package(
        source, folder, metadata, features_dir, tracks, seed, device=dev),
        "BatchNorm statistics averaged over", metadata)


@_derived_command("whiten", "Light JSON of the cliques to measure on (training data, not the "
                            "test set).")
@click.option("--shrinkage", type=click.FloatRange(0, min_open=True), default=0.1,
              show_default=True, help="Weight of the mean variance added to the covariance.")
@click.option("--tracks", type=click.IntRange(2),
              help="Whole cliques drawn until this many tracks [default: every version].")
def weights_whiten(source, metadata, features_dir, name, root, seed, device, shrinkage,
                   tracks) -> None:
    """Fold within-clique covariance normalisation (WCCN) into the last layer of the package
    SOURCE (a folder or name), measured on --metadata's embeddings, and write it as NAME."""
    from ..train.whiten import whiten_package

    _write_derived(root, name, device, lambda folder, dev: whiten_package(
        source, folder, metadata, features_dir, tracks, shrinkage, seed, device=dev),
        "within-clique covariance measured on", metadata)


@weights_group.command("blend")
@click.argument("source")
@click.argument("other")
@click.option("--weight", type=click.FloatRange(0, 1), required=True,
              help="Share of OTHER's weights: 0 gives SOURCE's, 1 OTHER's.")
@click.option("--name", required=True, help="Package name (a folder under --root).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Where to create the package [default: the weights folder].")
def weights_blend(source, other, weight, name, root) -> None:
    """Blend the weights of two packages of one model (folders or names), (1 - W) x SOURCE
    + W x OTHER, and write it as NAME with SOURCE's config and recipe: a model fine-tuned
    from SOURCE keeps, part way back, most of its gain and most of what SOURCE knew."""
    from ..train.blend import blend_package

    with interruptible("no package written"):
        _write_package_at(root, name, lambda folder: blend_package(source, other, folder, weight))
