"""Every Kandinsky pipeline runs every registered sampler correctly (issue 14 item 2).

For each pipeline kind and each sampler in `names.SAMPLERS` (new samplers are tested as soon as they are
registered), kandi's final latents equal a correct loop built here from diffusers' own UNet, MoVQ and
scheduler: the model input goes through scale_model_input, `generator=` reaches only steps that take it,
the variance channels are split off for every sampler but a learned-variance DDPM, img2img starts at
t_start * order with the begin index set (the sampler's own add_noise at its first step), and inpainting
re-noises the known region with the sampler's add_noise from unit noise (the start is that noise times
init_noise_sigma). On 2.2 and 3, where diffusers' own pipeline is right (samplers that need no input
scaling, take a generator and have order 1: DDPM, DDIM, the DPM-Solver family) kandi equals it too;
for the others the test shows diffusers' pipeline failing (a wrong image, or an exception).
"""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from compare import gen
from diffusers.pipelines.kandinsky import pipeline_kandinsky_inpaint as d21_inpaint
from diffusers.pipelines.kandinsky2_2 import pipeline_kandinsky2_2_inpainting as d_inpaint

import kandi
from kandi.schedulers.names import SAMPLERS, make_sampler

NAMES = [s.name for s in SAMPLERS]
PROMPT = "a red fox"
STEPS, STRENGTH, GUIDANCE = 4, 0.5, 4.0
TOL = dict(rtol=1e-4, atol=1e-4)


def picture(seed: int, size: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def square_mask(size: int) -> PIL.Image.Image:
    m = PIL.Image.new("L", (size, size), 0)
    m.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return m


def diffusers_sampler(name: str, config) -> object:
    """The diffusers scheduler a kandi sampler name stands for (same class name, same overrides)."""
    s = next(s for s in SAMPLERS if s.name == name)
    if s.cls.__name__ == "DPMSolverSDEScheduler":
        # its Brownian noise is kandi's own (diffusers' is torchsde's): the reference loop takes kandi's
        # class, whose steps equal diffusers' under the same noise (tests/test_samplers_sigma.py)
        return s.cls.from_config(dict(config), **s.overrides)
    return getattr(diffusers, s.cls.__name__).from_config(dict(config), **s.overrides)


def diffusers_is_right(sched, strength: float = 1.0) -> bool:
    """diffusers' Kandinsky loops never call scale_model_input, pass generator= to every step, start
    img2img at t_start (not t_start * order) and set no begin index (so a schedule that repeats its first
    timestep, as Karras sigmas of few steps on Kandinsky 3's cosine betas do, starts at its second entry):
    right only for samplers where none of that matters."""
    sched.set_timesteps(STEPS)
    ts, x = sched.timesteps, torch.ones(1, 1, 2, 2)
    scaled = sched.scale_model_input(x, ts[0])
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    first = ts[STEPS - min(int(STEPS * strength), STEPS)]
    unique_start = int((ts == first).sum()) == 1
    return torch.equal(scaled, x) and takes_generator and getattr(sched, "order", 1) == 1 and unique_start


# ------------------------------------------------------------------------------------ correct loop


def timesteps(sched, strength: float = 1.0) -> torch.Tensor:
    """SD's get_timesteps: the last int(steps * strength) steps, `order` entries each, begin index set."""
    sched.set_timesteps(STEPS)
    # from the start of the schedule (a Karras schedule of few steps may repeat its first timestep, and
    # a lookup by value would then start at the second entry)
    start = (STEPS - min(int(STEPS * strength), STEPS)) * sched.order
    if hasattr(sched, "set_begin_index"):  # the samplers that index their sigmas by step
        sched.set_begin_index(start)
    return sched.timesteps[start:]


def learned_variance(sched) -> bool:
    learned = getattr(sched.config, "variance_type", None) in ("learned", "learned_range")
    return learned and isinstance(sched, diffusers.DDPMScheduler)


def correct_loop(unet, sched, ts, x, predict, generator, extra=(), reinject=None, k3: bool = False):
    """Denoise `x` over `ts`; `predict(model_input, t)` is the UNet call on the guided batch."""
    draw = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    c, learned = x.shape[1], learned_variance(sched)
    for i, t in enumerate(ts):
        inp = sched.scale_model_input(x, t)
        inp = torch.cat([torch.cat([inp] * 2), *extra], dim=1)
        out = predict(inp, t)
        eps, var = out[:, :c], out[:, c:]
        u, g = eps.chunk(2)
        eps = (GUIDANCE + 1) * g - GUIDANCE * u if k3 else u + GUIDANCE * (g - u)
        pred = torch.cat([eps, var.chunk(2)[1]], dim=1) if learned else eps
        x = sched.step(pred, t, x, **draw).prev_sample
        if reinject is not None:
            x = reinject(i, x)
    return x


def k22_predict(unet, emb, neg, hint=None):
    cond = {"image_embeds": torch.cat([neg, emb])}
    if hint is not None:
        cond["hint"] = torch.cat([hint, hint])
    return lambda x, t: unet(
        sample=x, timestep=t, encoder_hidden_states=None, added_cond_kwargs=cond, return_dict=False
    )[0]


def k21_predict(d, emb, neg, prompt: str):
    pe, states, _ = d._encode_prompt(prompt, torch.device("cpu"), 1, True, None)
    cond = {"text_embeds": pe, "image_embeds": torch.cat([neg, emb])}
    return lambda x, t: d.unet(
        sample=x, timestep=t, encoder_hidden_states=states, added_cond_kwargs=cond, return_dict=False
    )[0]


def img2img_start(d, sched, ts, pil, size: int, generator, k21: bool = False) -> torch.Tensor:
    x0 = d.movq.encode(d.image_processor.preprocess(pil, size, size))["latents"]
    noise = torch.randn(x0.shape, generator=generator)
    if k21 and float(sched.init_noise_sigma) == 1.0:  # 2.1's own table, as the original repo (and diffusers)
        return d.add_noise(x0, noise, torch.tensor([int(sched.config.num_train_timesteps * STRENGTH) - 2]))
    return sched.add_noise(x0, noise, ts[:1])


def inpaint_reference(d, sched, predict, pil, mask, size: int, generator, k21: bool = False):
    """SD's inpainting loop on Kandinsky's 9-channel UNet: unit noise re-noises the known region (2.2;
    the 2.1 loop never puts the known region back, in the original repo and in diffusers)."""
    module, reinject = (d21_inpaint, False) if k21 else (d_inpaint, True)
    mask_t, image_t = module.prepare_mask_and_masked_image(pil, mask, size, size)
    known = d.movq.encode(image_t)["latents"]
    keep = module.prepare_mask(F.interpolate(mask_t, known.shape[-2:], mode="nearest"))
    ts = timesteps(sched)
    noise = torch.randn(known.shape, generator=generator)

    def put_back(i: int, x: torch.Tensor) -> torch.Tensor:
        proper = known if i == len(ts) - 1 else sched.add_noise(known, noise, torch.tensor([ts[i + 1]]))
        return keep * proper + (1 - keep) * x

    extra = (torch.cat([known * keep] * 2), torch.cat([keep] * 2))
    x = correct_loop(d.unet, sched, ts, noise * sched.init_noise_sigma, predict, generator, extra,
                     put_back if reinject else None)  # fmt: skip
    return keep * known + (1 - keep) * x if reinject else x


# -------------------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def k22(k22_repos, k22_edit_repos):
    out = {}
    for m in (diffusers, kandi):
        dec = m.KandinskyV22Pipeline.from_pretrained(k22_repos["decoder"])
        ctl = m.KandinskyV22ControlnetPipeline.from_pretrained(k22_edit_repos["controlnet"])
        p = {
            "t2i": dec,
            "img2img": m.KandinskyV22Img2ImgPipeline(**dec.components),
            "inpaint": m.KandinskyV22InpaintPipeline.from_pretrained(k22_edit_repos["inpaint"]),
            "controlnet": ctl,
            "controlnet_img2img": m.KandinskyV22ControlnetImg2ImgPipeline(**ctl.components),
        }
        out[m.__name__] = p
    out["base"] = loaded(out)
    dim = out["diffusers"]["t2i"].unet.config.encoder_hid_dim
    out["emb"] = torch.randn(2, dim, generator=gen(5)).chunk(2)
    return out


@pytest.fixture(scope="module")
def k21(k21_repos):
    out = {}
    for m in (diffusers, kandi):
        dec = m.KandinskyPipeline.from_pretrained(k21_repos["decoder"])
        p = {
            "t2i": dec,
            "img2img": m.KandinskyImg2ImgPipeline(**dec.components),
            "inpaint": m.KandinskyInpaintPipeline.from_pretrained(k21_repos["inpaint"]),
        }
        out[m.__name__] = p
    out["base"] = loaded(out)
    dim = out["diffusers"]["t2i"].unet.config.cross_attention_dim
    out["emb"] = torch.randn(2, dim, generator=gen(6)).chunk(2)
    return out


@pytest.fixture(scope="module")
def k3(k3_repo):
    out = {}
    for m in (diffusers, kandi):
        t2i = m.Kandinsky3Pipeline.from_pretrained(k3_repo)
        out[m.__name__] = {"t2i": t2i, "img2img": m.Kandinsky3Img2ImgPipeline(**t2i.components)}
    out["base"] = loaded(out)
    return out


def loaded(lib) -> dict:
    """{kind: the checkpoint's scheduler config} (every sampler is built over it), progress bars off."""
    for pipe in (*lib["diffusers"].values(), *lib["kandi"].values()):
        pipe.set_progress_bar_config(disable=True)
    return {kind: dict(p.scheduler.config) for kind, p in lib["diffusers"].items()}


def pair(lib, kind: str, name: str):
    """diffusers' and kandi's pipeline `kind`, both switched to sampler `name` over the checkpoint's config."""
    d, k, base = lib["diffusers"][kind], lib["kandi"][kind], lib["base"][kind]
    d.scheduler, k.scheduler = diffusers_sampler(name, base), make_sampler(name, base)
    return d, k


def last_latents(pipe, **kwargs) -> torch.Tensor:
    """The final latents through the legacy callback (pipelines without output_type="latent")."""
    seen = []
    pipe(**kwargs, callback=lambda i, t, x: seen.append(x.clone()), callback_steps=1, output_type="np")
    return seen[-1]


K22_SIZE = {"controlnet": 64, "controlnet_img2img": 64}  # a multiple of 64 px: sizes diffusers keeps


def k22_size(kind: str) -> int:
    return K22_SIZE.get(kind, 32)


def k22_call(kind: str, emb, neg) -> tuple[dict, bool]:
    """Arguments of a 2.2 pipeline kind, and whether it has output_type="latent"."""
    size = k22_size(kind)
    kw = dict(image_embeds=emb, negative_image_embeds=neg, height=size, width=size,
              num_inference_steps=STEPS, guidance_scale=GUIDANCE)  # fmt: skip
    if "img2img" in kind:
        kw |= {"image": picture(0, size), "strength": STRENGTH}
    if kind == "inpaint":
        kw |= {"image": picture(0, size), "mask_image": square_mask(size)}
    if "controlnet" in kind:
        kw["hint"] = torch.rand(1, 3, size, size, generator=gen(2))
    return kw, "controlnet" not in kind


def run(pipe, kw: dict, has_latent: bool, seed: int = 1) -> torch.Tensor:
    if has_latent:
        return pipe(**kw, generator=gen(seed), output_type="latent").images
    return last_latents(pipe, **kw, generator=gen(seed))


def k22_reference(d, sched, kind: str, kw: dict, g: torch.Generator | None = None) -> torch.Tensor:
    g, size = g or gen(1), k22_size(kind)
    predict = k22_predict(d.unet, kw["image_embeds"], kw["negative_image_embeds"], kw.get("hint"))
    if kind == "inpaint":
        return inpaint_reference(d, sched, predict, kw["image"], kw["mask_image"], size, g)
    if "img2img" in kind:
        ts = timesteps(sched, STRENGTH)
        x = img2img_start(d, sched, ts, kw["image"], size, g)
    else:
        ts = timesteps(sched)
        sf = 2 ** (len(d.movq.config.block_out_channels) - 1)
        h, w = d_inpaint.downscale_height_and_width(size, size, sf)
        x = torch.randn(1, 4, h, w, generator=g) * sched.init_noise_sigma
    return correct_loop(d.unet, sched, ts, x, predict, g)


def check_diffusers(d, kw: dict, has_latent: bool, ours: torch.Tensor, right: bool) -> None:
    """diffusers' own pipeline: equal to kandi where it is right, failing where it is not."""
    if right:
        torch.testing.assert_close(run(d, kw, has_latent), ours, **TOL)
        return
    try:
        theirs = run(d, kw, has_latent)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return  # e.g. UniPC's step takes no generator
    assert (theirs - ours).abs().max() > 1e-2


K22_KINDS = ["t2i", "img2img", "inpaint", "controlnet", "controlnet_img2img"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", K22_KINDS)
def test_k22_pipeline_runs_the_sampler_correctly(k22, kind, name):
    d, k, base = *pair(k22, kind, name), k22["base"][kind]
    kw, has_latent = k22_call(kind, *k22["emb"])
    ours = run(k, kw, has_latent)
    ref = k22_reference(d, diffusers_sampler(name, base), kind, kw)
    torch.testing.assert_close(ours, ref, **TOL)
    check_diffusers(
        d, kw, has_latent, ours, diffusers_is_right(diffusers_sampler(name, base), kw.get("strength", 1.0))
    )


AUTO = {
    "t2i": (kandi.AutoPipelineForText2Image, "kandinsky-community/kandinsky-2-2-decoder"),
    "img2img": (kandi.AutoPipelineForImage2Image, "kandinsky-community/kandinsky-2-2-decoder"),
    "inpaint": (kandi.AutoPipelineForInpainting, "kandinsky-community/kandinsky-2-2-decoder-inpaint"),
}


@pytest.fixture(scope="module")
def k22_prior(k22_repos):
    prior = diffusers.KandinskyV22PriorPipeline.from_pretrained(k22_repos["prior"])
    prior.set_progress_bar_config(disable=True)
    return prior


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", list(AUTO))
def test_k22_auto_and_combined_pipelines_run_the_sampler_correctly(offline_hub, k22, k22_prior, task, name):
    """The Auto pipelines give the combined ones; a sampler set on them reaches the decoder, which
    continues the prior's generator (the reference: diffusers' prior, then the correct loop)."""
    cls, repo = AUTO[task]
    pipe = cls.from_pretrained(repo)
    pipe.set_progress_bar_config(disable=True)
    assert "Combined" in type(pipe).__name__
    pipe.scheduler = make_sampler(name, pipe.scheduler.config)
    kind = task
    kw, _ = k22_call(kind, None, None)
    kw = {k: v for k, v in kw.items() if k not in ("image_embeds", "negative_image_embeds")}
    ours = pipe(
        prompt=PROMPT, prior_num_inference_steps=2, generator=gen(1), output_type="latent", **kw
    ).images
    g = gen(1)
    emb, neg = k22_prior(PROMPT, num_inference_steps=2, generator=g, return_dict=False)
    d = k22["diffusers"][kind]
    ref = k22_reference(d, diffusers_sampler(name, k22["base"][kind]), kind,
                        {**kw, "image_embeds": emb, "negative_image_embeds": neg}, g)  # fmt: skip
    torch.testing.assert_close(ours, ref, **TOL)


# ---------------------------------------------------------------------------------------- 2.1

K21_SIZE = 64


def k21_call(kind: str, emb, neg) -> dict:
    kw = dict(prompt=PROMPT, image_embeds=emb, negative_image_embeds=neg, height=K21_SIZE, width=K21_SIZE,
              num_inference_steps=STEPS, guidance_scale=GUIDANCE)  # fmt: skip
    if kind == "img2img":
        kw |= {"image": picture(0, K21_SIZE), "strength": STRENGTH}
    if kind == "inpaint":
        kw |= {"image": picture(0, K21_SIZE), "mask_image": square_mask(K21_SIZE)}
    return kw


def k21_reference(d, sched, kind: str, kw: dict) -> torch.Tensor:
    g = gen(1)
    predict = k21_predict(d, kw["image_embeds"], kw["negative_image_embeds"], PROMPT)
    if kind == "inpaint":
        return inpaint_reference(d, sched, predict, kw["image"], kw["mask_image"], K21_SIZE, g, k21=True)
    if kind == "img2img":
        ts = timesteps(sched, STRENGTH)
        x = img2img_start(d, sched, ts, kw["image"], K21_SIZE, g, k21=True)
    else:
        ts = timesteps(sched)
        sf = 2 ** (len(d.movq.config.block_out_channels) - 1)
        h, w = d_inpaint.downscale_height_and_width(K21_SIZE, K21_SIZE, sf)
        x = torch.randn(1, 4, h, w, generator=g) * sched.init_noise_sigma
    return correct_loop(d.unet, sched, ts, x, predict, g)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["t2i", "img2img", "inpaint"])
def test_k21_pipeline_runs_the_sampler_correctly(k21, kind, name):
    d, k = pair(k21, kind, name)
    kw = k21_call(kind, *k21["emb"])
    ours = run(k, kw, has_latent=False)
    ref = k21_reference(d, diffusers_sampler(name, k21["base"][kind]), kind, kw)
    torch.testing.assert_close(ours, ref, **TOL)


@pytest.fixture(scope="module")
def k21_learned(k21_repos) -> dict:
    """The 2.1 decoder repo's ddpm_scheduler/ config (variance_type learned_range, thresholding)."""
    return dict(
        diffusers.DDPMScheduler.from_pretrained(k21_repos["decoder"], subfolder="ddpm_scheduler").config
    )


@pytest.mark.parametrize("name", NAMES)
def test_k21_samplers_built_over_the_learned_range_config(k21, k21_learned, name):
    """Every sampler but DDPM gets the eps half alone, also DPM-Solver (whose config keeps learned_range)."""
    d, k = k21["diffusers"]["t2i"], k21["kandi"]["t2i"]
    k.scheduler = make_sampler(name, k21_learned)
    kw = k21_call("t2i", *k21["emb"])
    ours = run(k, kw, has_latent=False)
    # the correct loop's sampler reads the eps half; diffusers' DPM-Solver would cut a learned_range
    # output to 3 channels (an RGB pixel model's), so it is built without that key
    sched = diffusers_sampler(name, k21_learned)
    if not isinstance(sched, diffusers.DDPMScheduler):
        sched = diffusers_sampler(name, {**k21_learned, "variance_type": None})
    ref = k21_reference(d, sched, "t2i", kw)
    torch.testing.assert_close(ours, ref, **TOL)


def test_diffusers_dpm_solver_over_the_learned_range_config_fails(k21, k21_learned):
    # diffusers leaves the 8 channels on (the config says learned_range) and DPM-Solver keeps 3 of them
    d = k21["diffusers"]["t2i"]
    d.scheduler = diffusers_sampler("DPM++ 2M", k21_learned)
    with pytest.raises(RuntimeError):
        run(d, k21_call("t2i", *k21["emb"]), has_latent=False)


# ------------------------------------------------------------------------------------------ 3

K3_SIZE = 64


def k3_call(kind: str) -> dict:
    kw = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    if kind == "img2img":
        return kw | {"image": picture(0, K3_SIZE), "strength": STRENGTH}
    return kw | {"height": K3_SIZE, "width": K3_SIZE}


def k3_reference(d, sched, kind: str, kw: dict) -> torch.Tensor:
    g = gen(1)
    pe, npe, am, nam = d.encode_prompt(PROMPT, True, 1, torch.device("cpu"), None, _cut_context=True)
    embeds, mask = torch.cat([npe, pe]), torch.cat([nam, am]).bool()

    def predict(x, t):
        return d.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask, return_dict=False)[0]

    if kind == "img2img":
        ts = timesteps(sched, STRENGTH)
        # repeated per image as diffusers does (a copy: the UNet then runs diffusers' kernels, bit for bit)
        x0 = d.movq.encode(d.image_processor.preprocess(kw["image"]))["latents"].repeat_interleave(1, dim=0)
        x = sched.add_noise(x0, torch.randn(x0.shape, generator=g), ts[:1])
    else:
        ts = timesteps(sched)
        x = torch.randn(1, 4, K3_SIZE // 8, K3_SIZE // 8, generator=g) * sched.init_noise_sigma
    return correct_loop(d.unet, sched, ts, x, predict, g, k3=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["t2i", "img2img"])
def test_k3_pipeline_runs_the_sampler_correctly(k3, kind, name):
    d, k = pair(k3, kind, name)
    kw = k3_call(kind)
    ours = run(k, kw, has_latent=True)
    ref = k3_reference(d, diffusers_sampler(name, k3["base"][kind]), kind, kw)
    torch.testing.assert_close(ours, ref, **TOL)
    right = diffusers_is_right(diffusers_sampler(name, k3["base"][kind]), kw.get("strength", 1.0))
    check_diffusers(d, kw, True, ours, right)
