"""Peak memory and time of a learned 4x upscaler, whole image vs tiles (random weights of the size of
Real-ESRGAN's realesr-general-x4v3: Compact, 64 features, 32 convs).

    python bench/bench_upscale.py [SIDE] [TILE ...]     # each case in its own process (peak RSS)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(model: str, side: int, tile: int) -> dict:
    import numpy as np
    import PIL.Image
    import torch

    from kandi import upscale

    torch.set_num_threads(2)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    upscale.load_upscaler(model)
    t = time.perf_counter()
    out = upscale.upscale(image, 4, "x4", model_path=model, tile=tile)
    secs = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "side": side,
        "tile": tile,
        "out": list(out.size),
        "seconds": round(secs, 1),
        "peak_rss_mib": round(rss),
    }


def main() -> None:
    if sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    side, tiles = int(sys.argv[1]), [int(t) for t in sys.argv[2:]] or [0, 512, 256]
    import torch
    from safetensors.torch import save_file

    from kandi.upscale import spandrel

    spandrel()
    from spandrel.architectures.Compact import Compact

    net = Compact(num_feat=64, num_conv=32, upscale=4)
    path = Path(tempfile.mkdtemp()) / "x4.safetensors"
    save_file({k: torch.randn(v.shape) * 0.05 for k, v in net.state_dict().items()}, path)
    print("| input | tile | output | seconds | peak RSS (MiB) |\n|---|---|---|---|---|")
    for tile in tiles:
        res = subprocess.run([sys.executable, __file__, "--one", str(path), str(side), str(tile)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"| {side}x{side} | {tile or 'none'} | {r['out'][0]}x{r['out'][1]} | {r['seconds']} | {r['peak_rss_mib']} |"
        )


if __name__ == "__main__":
    main()
