"""Input pipeline stages: JPEG decoding in loader workers or on the device, the batched
augmentation, the SSL inputs (jitter, permutation, targets) against the per-sample reference."""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from relvit.data.augment import normalize, random_crop, random_hflip
from relvit.data.loading import FileSplit, batches, file_loader, file_transform, to_float_images
from relvit.data.registry import get_dataset
from relvit.ssl.jitter import JitterConfig
from relvit.ssl.jitter_reference import reference_jitter_image
from relvit.ssl.patches import patchify, unpatchify
from relvit.ssl.pipeline import jitter_and_shuffle
from relvit.ssl.targets import position_targets, relation_targets

from benchlib.measure import SyncCounter, count_ops, cuda_peak_mb, reset_peak, rss_mb, sync, timed
from benchlib.presets import CONFIGS
from benchlib.table import Row

JITTER = JitterConfig()


PHOTO_SIZE = (375, 500)  # (height, width): ImageNet's most common image size


def photo_like(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A uint8 [3, H, W] image with a natural photograph's 1/f amplitude spectrum (correlated
    colour channels). Saved as a JPEG of quality 90 at 500 x 375 it takes about 120 KB, about
    the average ImageNet training JPEG (110 KB), so decoding it costs about as much."""
    fy = torch.fft.fftfreq(height).abs()[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    f = (fy ** 2 + fx ** 2).sqrt().clamp_min(1 / max(height, width))
    spectrum = torch.randn(3, height, width // 2 + 1, dtype=torch.complex64,
                           generator=generator) / f
    luma, chroma = torch.fft.irfft2(spectrum, s=(height, width)).split([1, 2])
    chroma = 0.3 * chroma
    rgb = torch.cat([luma + chroma[0:1], luma - 0.5 * chroma[0:1] + chroma[1:], luma - chroma[1:]])
    return ((rgb - rgb.mean()) / rgb.std() * 50 + 120).clamp(0, 255).to(torch.uint8)


def photo_files(folder: Path, n: int, distinct: int = 8) -> list[Path]:
    """`n` JPEG files (quality 90) of `distinct` photo-like images, each saved once and copied:
    decoding, not the variety of the content, is what is timed."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        if i < distinct:
            Image.fromarray(photo_like(*PHOTO_SIZE, gen).permute(1, 2, 0).numpy()).save(
                path, quality=90)
        else:
            shutil.copyfile(paths[i % distinct], path)
    return paths


def resized_files(paths: list[Path], folder: Path, shorter_side: int,
                  distinct: int = 8) -> list[Path]:
    """The files of `photo_files` as `relvit resize-images` writes them (the distinct ones
    resized, the rest copied from those)."""
    from relvit.data.resize import ResizeSettings, resize_file

    settings = ResizeSettings(shorter_side)
    out = [folder / path.name for path in paths]
    for i, (path, target) in enumerate(zip(paths, out)):
        if i < distinct:
            resize_file(path, target, settings)
        else:
            shutil.copyfile(out[i % distinct], target)
    return out


def jpeg_kb(paths: list[Path], distinct: int = 8) -> float:
    """Mean size in KB of the distinct files of `photo_files`."""
    return sum(path.stat().st_size for path in paths[:distinct]) / min(distinct, len(paths)) / 1e3


def bench_decode(args, device: torch.device) -> list[Row]:
    """ImageNet-like JPEGs (500 x 375, ~120 KB) -> RandomResizedCrop(224) + flip -> uint8, in
    DataLoader workers with per-image seeding, as a training epoch of an image-file dataset;
    with `--decode-resized S` also their copies made by `relvit resize-images --shorter-side S`.

    Each worker decodes whole batches, so the batch is cut to give every worker at least 4 (a
    training epoch has hundreds), and the images to whole rounds of full batches, one per worker
    (a short last batch would be decoded by one worker while the others idle). The rate is the
    steady one: from the arrival of the last worker's first batch (the workers start together)
    to the arrival of the last batch, the workers' shutdown left out; the start-up (time to the
    first batch) is reported beside it. Then, with `--start-rounds`, a pass of one image per
    worker with workers started for it against a run's kept ones (`_worker_start_row`)."""
    n, workers = args.decode_images, max(1, args.workers)
    if n < 2 * workers:
        raise SystemExit(f"--decode-images {n} is too few for {args.workers} workers: "
                         f"give at least {2 * workers}")
    height, width = PHOTO_SIZE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_files(Path(tmp) / "photos", n)
        rows.append(_decode_row(paths, f"JPEG {width}x{height}", args, device))
        if args.decode_resized:
            resized = resized_files(paths, Path(tmp) / "resized", args.decode_resized)
            rows.append(_decode_row(resized, f"JPEG resized to shorter side "
                                    f"{args.decode_resized}", args, device))
            rows[-1].ratio += f", {rows[-1].images_per_s / rows[0].images_per_s:.2f}× original"
        if args.workers and args.start_rounds:
            rows.append(_worker_start_row(paths[:args.workers], args, device))
    return rows


def _worker_start_row(paths: list[Path], args, device: torch.device) -> Row:
    """A pass of one image per worker, with workers started for the pass (as every epoch's
    training and evaluation had them) against the kept workers of an `EpochLoader`, in rounds
    that alternate the two; the medians. Starting a worker forks this process, so its cost
    grows with the process's resident memory, reported beside it (a training process holds
    more: its model, optimizer and dataset). On CUDA the batches are pinned, as a run's."""
    split = FileSplit(paths, torch.zeros(len(paths), dtype=torch.long))
    transform = file_transform(get_dataset("imagenet100"), 224, train=True)
    pin = device.type == "cuda"
    loaders = {persistent: file_loader(split, transform, args.workers, pin, seeded=True,
                                       persistent=persistent) for persistent in (False, True)}
    one_each = [[i] for i in range(len(paths))]
    times: dict[bool, list[float]] = {False: [], True: []}
    rounds = args.start_rounds
    try:
        list(loaders[True].batches(one_each, 0))  # the kept workers start
        for seed in range(rounds):
            for persistent, loader in loaders.items():
                started = time.perf_counter()
                list(loader.batches(one_each, seed))
                times[persistent].append(time.perf_counter() - started)
    finally:
        loaders[True].close()
    fresh, kept = (statistics.median(times[persistent]) for persistent in (False, True))
    rss = rss_mb()
    return Row(f"decode: a pass of {len(paths)} images, {args.workers} workers",
               f"workers started for it ({rss:,.0f} MiB resident)", ms_per_step=1e3 * fresh,
               ratio=f"kept workers {1e3 * kept:,.0f} ms, {fresh / kept:.1f}× faster",
               extra={"fresh_s": fresh, "kept_s": kept, "rss_mb": rss, "rounds": rounds})


def _decode_row(paths: list[Path], what: str, args, device: torch.device) -> Row:
    """The decode row of `paths` (see `bench_decode`)."""
    spec = get_dataset("imagenet100")
    workers = max(1, args.workers)
    batch = max(1, min(args.pipeline_batch, len(paths) // (4 * workers)))
    n = len(paths) // (batch * workers) * batch * workers
    paths, count = paths[:n], n // batch
    kb = jpeg_kb(paths)
    split = FileSplit(paths, torch.zeros(n, dtype=torch.long))
    transform = file_transform(spec, 224, train=True)
    started = time.perf_counter()
    arrivals: list[float] = []
    steady = 0  # images after the first batch of every worker
    for i, (images, _) in enumerate(batches(split, torch.arange(n), batch, transform,
                                            args.workers, pin_memory=device.type == "cuda",
                                            seed=0)):
        images.to(device, non_blocking=True)
        if i == count - 1:
            sync(device)
        arrivals.append(time.perf_counter())
        steady += len(images) if i >= workers else 0
    rate = steady / (arrivals[-1] - arrivals[workers - 1])
    return Row(f"decode: {what} (~{kb:.0f} KB), {args.workers} workers",
               "224x224 RandomResizedCrop + flip", rate, ratio=f"{rate / workers:,.0f}/worker",
               extra={"startup_s": arrivals[0] - started, "batch": batch, "images": n,
                      "per_worker": rate / workers, "jpeg_kb": kb, "files": what})


def bench_device_decode(args, device: torch.device) -> list[Row]:
    """The alternative to decoding in CPU workers: a batch of JPEG bytes decoded on the training
    device (`torchvision.io.decode_jpeg` with a list: nvjpeg's batched decode on CUDA), then
    RandomResizedCrop(224) + flip per image there (torchvision's tensor path: bilinear with
    antialias, as PIL's resize but in float). Reading the files is left out (loader workers would
    read bytes). Also reported: the host's time to queue a batch (what a launch-bound step would
    pay for it) and the largest pixel difference from PIL's decode of the same file."""
    from torchvision import transforms as T
    from torchvision.io import ImageReadMode, decode_jpeg

    from relvit.data.formats import decode_image

    batch = args.pipeline_batch
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_files(Path(tmp), 8)
        kb = jpeg_kb(paths)
        encoded = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
                   for path in paths]
        reference = T.functional.pil_to_tensor(decode_image(paths[0]))
    crop_and_flip = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip()])
    inputs = [encoded[i % len(encoded)] for i in range(batch)]

    def decode_batch() -> torch.Tensor:
        images = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device)
        return torch.stack([crop_and_flip(image) for image in images])

    height, width = PHOTO_SIZE
    decoder = "nvjpeg" if device.type == "cuda" else "libjpeg-turbo"
    stage = (f"decode on the {device.type}: {decoder}, batch {batch}, JPEG {width}x{height} "
             f"(~{kb:.0f} KB)")
    config = "224x224 RandomResizedCrop + flip per image"
    with warnings.catch_warnings():  # torchvision >= 0.29: decoding moves to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            seconds = timed(decode_batch, args.repeats, device)
        except (RuntimeError, NotImplementedError) as err:  # e.g. a torchvision without nvjpeg
            return [Row(stage, config, ratio=f"failed: {str(err).splitlines()[0][:120]}")]
        queued = []
        for _ in range(args.repeats):
            sync(device)
            started = time.perf_counter()
            decode_batch()
            queued.append(time.perf_counter() - started)
        sync(device)
        decoded = decode_jpeg(encoded[0], mode=ImageReadMode.RGB, device=device).cpu()
    diff = int((decoded.int() - reference.int()).abs().max())
    return [Row(stage, config, batch / seconds,
                ratio=f"host {1e3 * min(queued):.1f} ms/batch, max |Δ| vs PIL {diff}",
                extra={"host_ms_per_batch": 1e3 * min(queued), "max_abs_diff_vs_pil": diff,
                       "jpeg_kb": kb})]


def bench_augment(args, device: torch.device) -> list[Row]:
    """The batched augmentation of `Objective.batch` on the training device."""
    b = args.pipeline_batch
    gen = torch.Generator(device=device).manual_seed(0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    small = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, device=device)
    large = torch.randint(0, 256, (b, 3, 224, 224), dtype=torch.uint8, device=device)

    def cifar() -> torch.Tensor:
        x = random_hflip(random_crop(to_float_images(small, 32), 4, gen), gen)
        return normalize(x, mean, std)

    def imagenet() -> torch.Tensor:
        return normalize(to_float_images(large, 224), mean, std)

    rows = []
    for config, fn in (("32x32, pad-crop 4 + flip + normalise", cifar),
                       ("224x224, to float + normalise", imagenet)):
        rows.append(Row("augment: batched", config, b / timed(fn, args.repeats, device)))
    return rows


def batched_pipeline(images: torch.Tensor, patch: int, gen: torch.Generator,
                     compiled: bool = False) -> tuple:
    """relvit: jitter + permutation + targets for a whole batch (what pretraining runs)."""
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    out, perm = jitter_and_shuffle(images, patch, JITTER, True, gen, compiled)
    return (out, relation_targets(*grid, perm, dtype=torch.uint8),
            position_targets(grid[0] * grid[1], perm))


def reference_pipeline(images: torch.Tensor, patch: int) -> list:
    """The original's way: one image at a time, torchvision transforms per patch."""
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    base = relation_targets(*grid)
    out = []
    for image in images:
        jittered = reference_jitter_image(image, patch, JITTER)
        perm = torch.randperm(grid[0] * grid[1])
        shuffled = unpatchify(patchify(jittered[None], patch)[:, perm], grid)
        out.append((shuffled, base[perm][:, perm], perm))
    return out


def bench_ssl_inputs(args, device: torch.device) -> list[Row]:
    rows = []
    for _, size, patch in CONFIGS:
        images = torch.rand(args.pipeline_batch, 3, size, size, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        config = f"{size}x{size}, patch {patch}, N={(size // patch) ** 2}"
        reset_peak(device)
        syncs = SyncCounter(device, args.sync_debug)
        fast = args.pipeline_batch / timed(lambda: batched_pipeline(images, patch, gen),
                                           args.repeats, device, around=syncs)
        rows.append(Row("SSL inputs: jitter + permutation + targets, batched", config, fast,
                        peak_mb=cuda_peak_mb(device),
                        extra=count_ops(lambda: batched_pipeline(images, patch, gen))))
        syncs.per_step(args.repeats, rows[-1].extra, f"{size}px SSL inputs")
        # The reference runs like a DataLoader worker: one thread, credited with perfect scaling
        # over `--workers` processes (a conservative ratio).
        n_ref = min(args.reference_images, args.pipeline_batch)
        cpu_images = images[:n_ref].cpu()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        workers = max(1, args.workers)  # --workers 0: one process, the main one
        slow = workers * n_ref / timed(lambda: reference_pipeline(cpu_images, patch), 1,
                                       torch.device("cpu"), warmup=0)
        torch.set_num_threads(threads)
        rows[-1].ratio = f"{fast / slow:,.1f}× ref"
        rows.append(Row(f"SSL inputs: per-sample reference ×{workers} workers", config, slow))
        if args.compile:  # the dense jitter torch.compile-d (config key `compile`)
            started = time.perf_counter()
            batched_pipeline(images, patch, gen, compiled=True)
            print(f"  {size}px SSL inputs compiled: first call "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            compiled = args.pipeline_batch / timed(
                lambda: batched_pipeline(images, patch, gen, compiled=True), args.repeats, device)
            rows.append(Row("SSL inputs: jitter + permutation + targets, compiled", config,
                            compiled, ratio=f"{compiled / fast:,.2f}× batched"))
    return rows

