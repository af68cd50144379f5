"""The DALI graph: crop, compose, augment, normalise. One definition serves the CPU and the GPU path.

Only the first step differs by device: on CPU the clips arrive decoded from the external source; on GPU they arrive
encoded and DALI's NVDEC decoder turns them into frames on the device. Everything after is the same operators on
DataNodes, which DALI places on the device their inputs live on.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def
from nvidia.dali.pipeline import do_not_convert

from pipeline.loader.external_source import CPU_OUTPUTS, GPU_OUTPUTS, PARAM_OUTPUTS, SampleSource
from pipeline.loader.params import LoaderParams
from pipeline.loader.sampling import NO_BLUR
from pipeline.normalise import IMAGENET_MEAN, IMAGENET_STD
from pipeline.signals import quiet_children

MEAN = [m * 255 for m in IMAGENET_MEAN]  # DALI normalises 0..255 pixels
STD = [s * 255 for s in IMAGENET_STD]
VIDEO_LAYOUTS = {name: "FHWC" for name in ("clip_a", "alpha", "plate", "clip_b", "alpha_b")}


def crop_flip(frames, roi, flip, crop: int):
    """Random resized crop given as a relative window, flipped horizontally when `flip`; the same for every frame.

    One resampling pass: the flip is the window's x edges swapped (DALI's resize mirrors a window whose start lies
    past its end), rather than a flip of the resized frames after. The filter's taps are then summed in the other
    order, so a flipped crop may differ from a crop flipped after by 1 in rare pixels (about 0.1%)."""
    x_start = roi[1] + flip * (roi[3] - roi[1])  # x1 when flipped, else x0
    x_end = roi[3] - flip * (roi[3] - roi[1])
    start, end = fn.stack(roi[0], x_start), fn.stack(roi[2], x_end)
    return fn.resize(frames, roi_start=start, roi_end=end, roi_relative=True, size=[crop, crop])


def over_time(background, clip):
    """A (1, H, W, C) plate repeated over the clip's frames (a no-op for (T, H, W, C) frames), for debug outputs:
    the compose step broadcasts the plate itself."""
    repeated = fn.cast(clip, dtype=types.FLOAT) * 0.0 + fn.cast(background, dtype=types.FLOAT)
    return fn.cast(repeated, dtype=types.UINT8)


def compose(clip, alpha, background, fame, binary: bool = False):
    """query = m * clip + (1 - m) * background, m = alpha / 255 (the source made the alpha from the mask inside the
    query's crop: `pipeline.loader.query_mask`); m is 1 everywhere when this sample is not merged.

    background is (T, H, W, C) frames or a (1, H, W, C) plate, which DALI's arithmetic broadcasts over the frames:
    a plate is cropped and blended once, not once per frame. A `binary` alpha (0 or 255: every mask mode but
    "soft") blends in uint8, each pixel taken whole from one side: the same bytes as the float blend at less than
    half its cost."""
    if binary:
        one = types.Constant(1, dtype=types.UINT8)
        keep = (alpha & one) | (fn.cast(fame, dtype=types.UINT8) ^ one)  # 1: own pixel, or a sample not merged
        return clip * keep + background * (keep ^ one)  # one term is 0 at every pixel: no overflow
    m = 1.0 - fame * (1.0 - alpha * (1.0 / 255.0))  # uint8 times a float is float: no cast of the frames first
    merged = m * clip + (1.0 - m) * background  # one arithmetic operator: DALI fuses the expression
    return fn.cast(merged, dtype=types.UINT8)  # DALI rounds to nearest when casting to an integer


def augment(frames, colour):
    """MoCo v2 colour jitter, grayscale (saturation 0) and blur, with parameters drawn per clip by the source.

    The hue/saturation step and the blur are the costly ones; a clip skips whichever it did not draw (DALI
    conditionals split the batch per sample) rather than running it as an identity."""
    out = fn.brightness_contrast(frames, brightness=colour[0], contrast=colour[1], contrast_center=128.0)
    if (colour[2] != 1.0) | (colour[3] != 0.0):
        out = fn.hsv(out, saturation=colour[2], hue=colour[3])
    if colour[4] > NO_BLUR:
        out = fn.gaussian_blur(out, sigma=colour[4])
    return out


def normalise(frames):
    """(T, H, W, C) uint8 -> (C, T, H, W) float, ImageNet mean and std."""
    return fn.crop_mirror_normalize(frames, dtype=types.FLOAT, output_layout="CFHW", mean=MEAN, std=STD)


def partner_meta(meta, partner_slot):
    """Each sample's meta with its partner's video and clip a (fields 4 and 5) taken from the partner's own meta:
    what the partner sample holds, a substitute included when its own clip was left out."""
    partner = fn.permute_batch(meta, indices=partner_slot)
    return fn.cat(meta[0:4], partner[0:1], partner[2:3], meta[6:])


@do_not_convert  # plain Python: AutoGraph (DALI conditionals) rewrites zip and would reject strict=
def _by_name(names, outputs) -> dict:
    return dict(zip(names, outputs, strict=True))


def _decode_gpu(encoded, frames, size):
    video = fn.decoders.video(encoded, device="mixed", frames=frames)
    return fn.resize(video, size=list(size))


ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread_children():
    """Worker processes started inside get one BLAS/OpenMP thread each (their numpy reads this at start-up): each
    worker is one of several decoding processes on the cores, and a pool of BLAS threads per worker, there for the
    query alpha's matrix products, fought the other workers' decoding on a loaded machine (the cached arm at 0.66x
    plain in one benchmark run, 0.87x in the next without the pools). This process's own settings are put back."""
    before = {name: os.environ.get(name) for name in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_pipeline(source: SampleSource, batch_size: int, device_id: int | None, debug_outputs: bool = False):
    """A DALI pipeline around `source`. device_id None runs DALI's CPU backend. A `decode_only` source makes the
    decoding floor: the same worker processes decoding the same clips, output as they arrive."""
    params: LoaderParams = source.params
    gpu = source.gpu
    names = ("clip_a", "clip_b") if source.decode_only else (GPU_OUTPUTS if gpu else CPU_OUTPUTS) + PARAM_OUTPUTS
    size = source.catalog.size
    plates = source.merges_plates

    @pipeline_def(
        batch_size=batch_size,
        num_threads=params.num_threads,
        device_id=device_id,
        prefetch_queue_depth=params.prefetch,
        py_num_workers=max(1, params.num_workers),
        py_start_method="spawn",
        exec_dynamic=True,
        enable_conditionals=True,
    )
    def fame_pipeline():
        parallel = {"parallel": True, "prefetch_queue_depth": params.prefetch} if params.num_workers > 0 else {}
        outs = fn.external_source(
            source=source,
            num_outputs=len(names),
            batch=False,
            layout=[VIDEO_LAYOUTS.get(name, "") for name in names],
            **parallel,
        )
        data = _by_name(names, outs)
        if source.decode_only:
            return data["clip_a"], data["clip_b"]
        rois, flips, colour, partner_slot = data["rois"], data["flips"], data["colour"], data["partner_slot"]
        if gpu:
            clip_a = _decode_gpu(data["enc_a"], data["frames_a"], size)
            clip_b = _decode_gpu(data["enc_b"], data["frames_b"], size)
            alpha, plate, alpha_b = data["alpha"].gpu(), data["plate"].gpu(), data["alpha_b"].gpu()
        else:
            clip_a, alpha, plate, clip_b = data["clip_a"], data["alpha"], data["plate"], data["clip_b"]
            alpha_b = data["alpha_b"]
        crop = params.crop
        a = crop_flip(clip_a, rois[0], flips[0], crop)
        m = alpha  # the alpha arrives cropped to the query's window and flipped as its view is
        # The partner is another sample of the batch: its plate (cropped with this query's window), or its clip a
        # as cropped for its own query.
        needs_partner = not plates or params.return_partner
        partner = fn.permute_batch(a, indices=partner_slot) if needs_partner else None
        bg = partner
        binary = params.mask_mode != "soft"
        fame = data["fame"].gpu() if gpu else data["fame"]  # per-sample scalars join GPU arithmetic on the GPU
        if params.fame_p > 0 or params.return_background or debug_outputs:
            if plates:
                bg = crop_flip(fn.permute_batch(plate, indices=partner_slot), rois[0], flips[0], crop)
            merged = compose(a, m, bg, fame, binary=binary)
        else:  # no query is ever merged (plain MoCo): the cropped clip is the query, without a blend
            merged = a
        key = crop_flip(clip_b, rois[1], flips[1], crop)
        if params.merges_key:  # over its partner's partner (the partners form one cycle: another video again)
            second = fn.permute_batch(partner_slot, indices=partner_slot)
            if plates:
                key_bg = crop_flip(fn.permute_batch(plate, indices=second), rois[1], flips[1], crop)
            else:  # that video's clip a as cropped for its own query
                key_bg = fn.permute_batch(a, indices=second)
            key = compose(key, alpha_b, key_bg, fame, binary=binary)
        meta = partner_meta(data["meta"], partner_slot)
        outputs = [normalise(augment(merged, colour[0])), normalise(augment(key, colour[1])), meta]
        if params.return_partner:  # the extra views in `LoaderParams.extra_views` order
            outputs.append(normalise(augment(partner, colour[2])))
        if params.return_background:  # the query without its foreground: same crop, flip and colours
            outputs.append(normalise(augment(over_time(bg, a), colour[0])))
        if debug_outputs:
            outputs += [a, m, over_time(bg, a), merged, key]
        return tuple(outputs)

    pipe = fame_pipeline()
    # The worker processes start here, deaf to Ctrl-C and SIGTERM: a terminal's Ctrl-C reaches the whole process
    # group, and workers dying under a running pipeline would make it fail with their tracebacks. They stop when this
    # process lets the pipeline go (`FameLoader.close`, or at exit).
    with warnings.catch_warnings(), quiet_children(), one_thread_children():
        # Frames backgrounds need no plate: DALI warns of unused source outputs.
        warnings.filterwarnings("ignore", message=".*(is|are) not used.*")
        pipe.build()
    return pipe
