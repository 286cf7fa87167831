"""Kandinsky 2.x text to image for several requests at once (`kandi batch`): the prior stage, then one
decoder run over every image of the batch.

Each image keeps its own `torch.Generator().manual_seed(seed)`, used first by its prior and then by its
row of the decoder batch (the decoder loop and schedulers draw noise row by row from a list of
generators), so every image is the one `text_to_image` makes alone, up to the rounding of batched
kernels (a few 8-bit levels at most).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from .common import to_output
from .k22 import decode, decoder_job, encode_decoder_text
from .k22_tasks import (
    IMAGE_DECODER,
    K22Models,
    Progress,
    Result,
    _check_unet,
    _decoder_scheduler,
    _prior_progress,
    _progress,
    _size,
)

# what the requests of one batch must share: one decoder run takes one size, schedule and guidance
SHARED = ("width", "height", "steps", "guidance_scale", "scheduler")


@torch.no_grad()
def text_to_image_batch(m: K22Models, requests: list[Any]) -> Iterator[Progress | Result]:
    """Images for several GenerationOptions that agree on `SHARED`: request r's images in order, each
    with seed r.seed + k. Progress counts the prior runs (one per image), then the decoder steps."""
    _check_unet(m, 4, IMAGE_DECODER)
    first = requests[0]
    for r in requests:
        if any(getattr(r, f) != getattr(first, f) for f in SHARED):
            raise ValueError(f"a decoder batch needs one {', '.join(SHARED)}: {r} differs from {first}")
    rows = [(r, r.seed + k) for r in requests for k in range(r.num_images)]
    gens = [torch.Generator().manual_seed(seed) for _, seed in rows]
    embeds, negatives = [], []
    for k, ((r, _), g) in enumerate(zip(rows, gens)):  # the prior stage: each image on its own
        emb, neg = yield from _prior_progress(m, r, g, k, len(rows))
        embeds.append(emb)
        negatives.append(neg)
    images = yield from _decode_rows(m, first, [r.prompt for r, _ in rows], embeds, negatives, gens)
    yield Result(images, [seed for _, seed in rows])


def _decode_rows(m: K22Models, opts: Any, prompts: list[str], embeds: list[torch.Tensor],
                 negatives: list[torch.Tensor], gens: list[torch.Generator]):  # fmt: skip
    """The decoder stage: one loop over all rows (row i drawn from gens[i]); returns the PIL images."""
    inputs: dict[str, Any] = {}
    if m.k21:  # the 2.1 decoder reads each prompt too ("" as its negative), as `_decode` does
        m.placement.use(m.decoder_text_encoder)
        text = encode_decoder_text(m.decoder_tokenizer, m.decoder_text_encoder, prompts, None, 1,
                                   opts.guidance_scale > 1, m.device)  # fmt: skip
        inputs |= {"text": text, "k21": True}
    scheduler = _decoder_scheduler(m.scheduler, opts.scheduler)
    emb, neg = torch.cat(embeds), torch.cat(negatives)
    job = decoder_job(m.unet, scheduler, m.movq, emb, neg, 1, _size(m, opts), opts.steps, opts.guidance_scale,
                      gens, m.device, m.placement, **inputs)  # fmt: skip
    latents = yield from _progress(job, "decoder", 0, 1)
    out = to_output(decode(m.movq, latents, m.placement), "pil")
    m.placement.release()
    return out
