"""Run a trained model on your own pictures: ``python -m tasks.predict RUN_DIR INPUT... --out DIR``.

For runs of the image and video tasks. An INPUT is a PNG or JPEG file or a folder (its ``.png``, ``.jpg`` and
``.jpeg`` files, in name order; other files in it are skipped). Each picture is brought to the model's input
as the task's data pipeline brings its images:

    multi_dsprites   the whole picture resized to 64 x 64 (PIL bilinear; Multi-dSprites' images are 64 x 64),
                     then to the run's resolution as ``tasks.object_discovery.ImageSet`` does
    clevrtex         ClevrTex's centre crop and resize to 64 x 64 (``tasks.clevrtex.data.crop_and_resize``),
                     then to the run's resolution as ``ImageSet`` does
    clevr            the whole picture resized to 128 x 128 (PIL bilinear, as CLEVR's 480 x 320 frames), then
                     to the run's image size (``tasks.clevr.experiment.ClevrSet``)
    clevrer          each frame resized to 64 x 64 (PIL bilinear, as the real CLEVRER frames); a pair is a
                     folder of exactly two frames, or two files given one after the other

Written to ``DIR/<name>/`` per input (``<name>``: the file's name without its suffix, or the folder's name
for a CLEVRER pair; files already there are replaced):

    multi_dsprites, clevrtex   input.png (what the model saw), recon.png, mask_<kk>.png (slot k's alpha
                               mask, white = 1; k with two digits), segmentation.png (each pixel in the
                               colour of its argmax slot), slots.npy (K, D) float32
    clevrer                    the same per frame, prefixed frame0_ / frame1_; slots.npy (2, K, D)
    clevr                      input.png, objects.json (per slot: the "real object" confidence, 3-d
                               coordinates, size, material, shape, colour), attention_<kk>.png (slot k's
                               attention over the feature grid, scaled by the image's largest weight),
                               slots.npy (K, D)

Slot attention draws its initial slots at random: every input is predicted with the RNG seeded with
``--seed``, so a picture gives the same output whatever else is predicted with it. ``--device`` picks where
the model runs (auto: CUDA when present). A picture that is not a
PNG or JPEG, does not exist, or does not have three colour channels (grayscale, RGBA, palette) is refused by
name before anything is written; random_objects runs have no picture input.

Exit status: 0 on success, 2 for a folder without a readable run or a refused input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from slots.runtime import pick_device

from .clevr.data import IMAGE_SIZE as CLEVR_SIZE
from .clevrer.generate import IMAGE_SIZE as CLEVRER_SIZE
from .multi_dsprites.data import IMAGE_SIZE as MULTI_DSPRITES_SIZE
from .runner import int_at_least
from .runs import Run, load_run, run_parser

__all__ = ["main", "read_rgb", "collect_inputs", "PREDICTORS", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FORMATS = ("PNG", "JPEG")
_CHANNELS = {"1": "1 channel (black and white)", "L": "1 channel (grayscale)", "LA": "2 channels (grayscale "
             "and alpha)", "P": "1 channel (a palette)", "RGBA": "4 channels (RGB and alpha)",
             "CMYK": "4 channels (CMYK)", "I;16": "1 channel (16-bit grayscale)", "I": "1 channel (32-bit "
             "grayscale)"}


class InputError(ValueError):
    """An input picture that cannot be used, named in the message."""


def read_rgb(path: Path):
    """The PNG or JPEG picture at ``path`` as an RGB PIL image.

    Raises:
        InputError naming ``path``: no such file, not a picture, another format, or not three colour channels
        (a grayscale, RGBA or palette picture is refused, not converted: dropping alpha or inventing colour
        would feed the model something else than the picture shows).
    """
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"{path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{path} is not a PNG or JPEG picture (PIL cannot read it: {type(e).__name__})") from None
    if im.format not in _FORMATS:
        raise InputError(f"{path} is a {im.format} picture; predict reads PNG or JPEG")
    if im.mode != "RGB":
        has = _CHANNELS.get(im.mode, f"mode {im.mode}, {len(im.getbands())} channel(s)")
        raise InputError(f"{path} has {has}; the model takes RGB pictures of 3 channels (save it as RGB)")
    return im


def _folder_pictures(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"folder {folder} holds no .png, .jpg or .jpeg files")
    return files


def collect_inputs(inputs: list[Path], frames: int) -> list[tuple[str, list[Path]]]:
    """The named inputs: (name, ``frames`` picture paths) each.

    With ``frames`` 1 a folder gives one input per picture in it and a file one input. With ``frames`` 2 (a
    video pair) a folder must hold exactly two pictures and gives one input named after the folder; files are
    paired in the order given, each pair named after its first file.

    Raises:
        InputError for a missing path, a folder without pictures, a folder or files that do not make whole
        pairs, or two inputs of the same name (their outputs would overwrite each other).
    """
    named, loose = [], []
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path} does not exist")
        if path.is_dir():
            files = _folder_pictures(path)
            if frames == 1:
                named += [(p.stem, [p]) for p in files]
            elif len(files) != frames:
                raise InputError(f"folder {path} holds {len(files)} pictures; a pair is a folder of exactly "
                                 f"{frames} frames")
            else:
                named.append((path.name, files))
        else:
            loose.append(path)
    if len(loose) % frames:
        raise InputError(f"{len(loose)} picture files do not make pairs of {frames} frames: {loose[-1]} has no "
                         "partner")
    named += [(loose[i].stem, loose[i:i + frames]) for i in range(0, len(loose), frames)]
    seen = {}
    for name, files in named:
        if name in seen:
            raise InputError(f"{seen[name][0]} and {files[0]} would both be written to <out>/{name}/; rename one")
        seen[name] = files
    return named


def _square(size: int):
    """A PIL RGB picture -> uint8 (3, size, size): the whole picture resized with PIL bilinear."""
    from PIL import Image

    def prepare(im):
        return np.asarray(im.resize((size, size), resample=Image.BILINEAR)).transpose(2, 0, 1)
    return prepare


def _clevrtex_crop(im) -> np.ndarray:
    from .clevrtex.data import crop_and_resize

    return crop_and_resize(im)[0]


def _object_discovery_input(pictures: np.ndarray, run: Run) -> torch.Tensor:
    """uint8 (N, 3, 64, 64) -> (N, 3, R, R) in [-1, 1] through the task's ``ImageSet``."""
    from .object_discovery import ImageSet
    from .scenes.records import SceneData

    data = ImageSet(SceneData(pictures, np.zeros((len(pictures),) + pictures.shape[2:], np.uint8)),
                    run.config.resolution)
    return data[torch.arange(len(data))]["images"]


def _clevr_input(pictures: np.ndarray, run: Run) -> torch.Tensor:
    """uint8 (N, 3, 128, 128) -> (N, 3, S, S) in [-1, 1] through the task's ``ClevrSet``."""
    from .clevr.data import SET_TARGET_DIM, resize_images
    from .clevr.experiment import ClevrSet

    data = ClevrSet(resize_images(torch.from_numpy(pictures), run.config.image_size),
                    torch.zeros(len(pictures), 1, SET_TARGET_DIM))
    return data[torch.arange(len(data))]["image"]


def _video_input(pictures: np.ndarray, run: Run) -> torch.Tensor:
    """uint8 (N, T, 3, 64, 64) -> float in [-1, 1], as the CLEVRER evaluation feeds its pairs."""
    from slots import to_model_range

    return to_model_range(torch.from_numpy(pictures))


def _u8(x: torch.Tensor) -> np.ndarray:
    """float in [0, 1] -> uint8, rounded."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path)


def _write_frame(folder: Path, prefix: str, image: torch.Tensor, recon: torch.Tensor, masks: torch.Tensor) -> None:
    """input, recon, mask_<k> and segmentation PNGs of one frame: image and recon (3, R, R) in [-1, 1], alpha
    masks (K, R, R)."""
    from .scenes.show import colorize_masks

    _save_png(folder / f"{prefix}input.png", _u8((image.permute(1, 2, 0) + 1) / 2))
    _save_png(folder / f"{prefix}recon.png", _u8((recon.permute(1, 2, 0) + 1) / 2))
    for k, mask in enumerate(masks):
        _save_png(folder / f"{prefix}mask_{k:02d}.png", _u8(mask))
    _save_png(folder / f"{prefix}segmentation.png", colorize_masks(masks.argmax(0) + 1))  # slot k: colour k + 1


def _write_autoencoder(model, x: torch.Tensor, folder: Path) -> None:
    """x (1, 3, R, R) -> the slot autoencoder's files."""
    out = model(x)
    _write_frame(folder, "", x[0].cpu(), out.recon[0].float().cpu(), out.masks[0].float().cpu())
    np.save(folder / "slots.npy", out.slots[0].float().cpu().numpy())


def _write_video(model, x: torch.Tensor, folder: Path) -> None:
    """x (1, T, 3, H, W) -> the video model's files, per frame."""
    out = model(x)
    for t in range(x.shape[1]):
        _write_frame(folder, f"frame{t}_", x[0, t].cpu(), out.recon[0, t].float().cpu(),
                     out.masks[0, t].float().cpu())
    np.save(folder / "slots.npy", out.slots[0].float().cpu().numpy())


def _write_set_prediction(model, x: torch.Tensor, folder: Path) -> None:
    """x (1, 3, S, S) -> the CLEVR model's objects, attention maps and slots."""
    from .clevr.data import describe_set_predictions

    out = model.infer(x)
    S = x.shape[-1]
    _save_png(folder / "input.png", _u8((x[0].cpu().permute(1, 2, 0) + 1) / 2))
    objects = [{"slot": k, **obj} for k, obj in enumerate(describe_set_predictions(out.pred[0].float().cpu()))]
    (folder / "objects.json").write_text(json.dumps(objects, indent=2) + "\n")
    attn = F.interpolate(out.attn.float(), size=(S, S), mode="nearest")[0].cpu()  # (K, S, S) on the image grid
    attn = attn / attn.amax().clamp_min(1e-12)
    for k, a in enumerate(attn):
        _save_png(folder / f"attention_{k:02d}.png", _u8(a))
    np.save(folder / "slots.npy", out.slots[0].float().cpu().numpy())


class Predictor(NamedTuple):
    """How a task turns pictures into the model's input and its output into files.

    frames: pictures per input (2: a video pair). picture: PIL RGB -> uint8 (3, s, s) at the data's native
    size. model_input: (uint8 (N, 3, s, s) or (N, T, 3, s, s), run) -> the model's float input.
    write: (model, one input (1, ...), folder) -> None.
    """

    frames: int
    picture: Callable
    model_input: Callable[[np.ndarray, Run], torch.Tensor]
    write: Callable[[torch.nn.Module, torch.Tensor, Path], None]


PREDICTORS = {
    "multi_dsprites": Predictor(1, _square(MULTI_DSPRITES_SIZE), _object_discovery_input, _write_autoencoder),
    "clevrtex": Predictor(1, _clevrtex_crop, _object_discovery_input, _write_autoencoder),
    "clevr": Predictor(1, _square(CLEVR_SIZE), _clevr_input, _write_set_prediction),
    "clevrer": Predictor(2, _square(CLEVRER_SIZE), _video_input, _write_video),
}


def predict(run: Run, inputs: list[Path], out: Path, seed: int = 0, device="cpu") -> list[Path]:
    """Write the predictions of ``run``'s model on ``inputs`` (module docstring) under ``out``; every picture
    is read and checked before anything is written. Returns the folders written, one per input.

    Raises:
        InputError (a ValueError) for a task without picture input, a refused input or an ``out`` that is a file.
    """
    if run.task.name not in PREDICTORS:
        raise InputError(f"{run.path} is a run of task {run.task.name}, whose inputs are not pictures (random "
                         f"objects are sets of vectors); predict takes runs of {', '.join(PREDICTORS)}")
    p = PREDICTORS[run.task.name]
    out = Path(out)
    if any(q.exists() and not q.is_dir() for q in (out, *out.parents)):
        raise InputError(f"--out {out} is a file or lies under one; choose a folder")
    named = collect_inputs(inputs, p.frames)
    pictures = [np.stack([p.picture(read_rgb(f)) for f in files]) for _, files in named]  # (T, 3, s, s) each
    x = p.model_input(np.stack(pictures) if p.frames > 1 else np.concatenate(pictures), run)
    device = torch.device(device)
    model = run.model.to(device).eval()
    written = []
    for i, (name, _) in enumerate(named):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            p.write(model, x[i:i + 1].to(device), folder)
        written.append(folder)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m tasks.predict", __doc__.split("\n\n")[0])
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="PNG or JPEG files or folders of them (CLEVRER: a folder of two frames, or two files)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the predictions to, one folder per input")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the initial slots' random draw")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = load_run(args.run_dir)
        folders = predict(run, args.inputs, args.out, args.seed, pick_device(args.device, 0))
    except ValueError as e:  # includes CheckpointError and InputError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(f"wrote {folder}/" for folder in folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
