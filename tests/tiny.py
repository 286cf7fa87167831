"""Tiny random Kandinsky components (diffusers' own test sizes), saved as diffusers repos and HF caches.

diffusers is the oracle: components are built with diffusers / transformers, saved in diffusers layout,
and kandi loads the saved folders. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

CONFIGS = Path(__file__).parent / "data" / "configs"
DECODER_CARD = (
    "---\nlicense: apache-2.0\nprior:\n- kandinsky-community/kandinsky-2-2-prior\n---\n# tiny test repo\n"
)


def tiny_kwargs(name: str, component: str) -> dict:
    spec = json.loads((CONFIGS / f"{name}.json").read_text())["components"][component]
    return {k: v for k, v in spec["kwargs"].items() if not k.startswith("_")}


def _byte_chars() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest above 255
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer with a byte-level vocabulary (514 ids, no merges), max length 77."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _jitter(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Random weights everywhere, so that zero-initialised layers do not hide bugs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def assert_as_accurate_as(
    ours: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, floor: float = 1e-6
) -> None:
    """`ours` (kandi fp32) is as close to `exact` (the oracle run in float64) as `ref` (the oracle in
    fp32) is, within a factor of 2: a comparison of float rounding that no CPU's summation order can
    fail, where one fp32 result against another would assert the oracle's own rounding."""
    err = (ours.double() - exact).abs().max().item()
    ref_err = (ref.double() - exact).abs().max().item()
    assert err <= 2 * ref_err + floor, (err, ref_err)


def k22_prior_components(workdir: Path, seed: int = 0) -> dict:
    import diffusers
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(seed)
    prior = diffusers.PriorTransformer(**tiny_kwargs("tiny-k22-prior", "prior"))
    _jitter(prior)
    with torch.no_grad():
        prior.clip_std.copy_(torch.ones_like(prior.clip_std) + 0.1 * torch.rand_like(prior.clip_std))
        prior.clip_mean.copy_(0.1 * torch.randn_like(prior.clip_mean))
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(**tiny_kwargs("tiny-k22-prior", "image_encoder"))
    )
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(**tiny_kwargs("tiny-k22-prior", "text_encoder"))
    )
    return {
        "prior": prior.eval(),
        "image_encoder": image_encoder.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(workdir / "clip_vocab"),
        "scheduler": diffusers.UnCLIPScheduler(**tiny_kwargs("tiny-k22-prior", "scheduler")),
        "image_processor": CLIPImageProcessor(**tiny_kwargs("tiny-k22-prior", "image_processor")),
    }


def k22_decoder_components(seed: int = 0, scheduler: str = "ddpm", config: str = "tiny-k22-decoder") -> dict:
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**tiny_kwargs(config, "unet"))
    movq = diffusers.VQModel(**tiny_kwargs(config, "movq"))
    _jitter(unet)
    _jitter(movq, 0.02)
    if scheduler == "ddpm":  # the official 2.2 decoder scheduler config
        sched = diffusers.DDPMScheduler.from_config(
            json.loads((CONFIGS / "k22-decoder.scheduler.json").read_text())
        )
    else:
        sched = diffusers.DDIMScheduler(**tiny_kwargs(config, "scheduler"))
    return {"unet": unet.eval(), "scheduler": sched, "movq": movq.eval()}


def save_k22_repos(root: Path) -> dict[str, Path]:
    """diffusers-saved prior and decoder repos (decoder with the model card naming its prior)."""
    import diffusers

    prior = diffusers.KandinskyV22PriorPipeline(**k22_prior_components(root))
    decoder = diffusers.KandinskyV22Pipeline(**k22_decoder_components())
    paths = {"prior": root / "k22-prior", "decoder": root / "k22-decoder"}
    prior.save_pretrained(paths["prior"])
    decoder.save_pretrained(paths["decoder"])
    (paths["decoder"] / "README.md").write_text(DECODER_CARD)
    return paths


def save_k22_edit_repos(root: Path) -> dict[str, Path]:
    """diffusers-saved inpainting (9-channel UNet) and ControlNet (hint UNet, 4-level MoVQ) decoders."""
    import diffusers

    inpaint = diffusers.KandinskyV22InpaintPipeline(**k22_decoder_components(1, "ddpm", "tiny-k22-inpaint"))
    control = diffusers.KandinskyV22ControlnetPipeline(
        **k22_decoder_components(2, "ddim", "tiny-k22-controlnet")
    )
    paths = {"inpaint": root / "k22-decoder-inpaint", "controlnet": root / "k22-controlnet-depth"}
    inpaint.save_pretrained(paths["inpaint"])
    control.save_pretrained(paths["controlnet"])
    (paths["inpaint"] / "README.md").write_text(DECODER_CARD)
    return paths


def install_in_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """Place `folder` in a Hugging Face hub cache under `repo_id`, as a download would."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def offline_env(cache: Path) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "hf_home")}


def diffusers_to_kandi_env(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub (already imported) at `cache`, offline."""
    import huggingface_hub.constants as c

    for k, v in offline_env(cache).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    os.makedirs(cache, exist_ok=True)


# ---------------------------------------------------------------- Kandinsky 2.1

K21_DECODER_CARD = (
    "---\nlicense: apache-2.0\nprior:\n- kandinsky-community/kandinsky-2-1-prior\n---\n# tiny test repo\n"
)
XLMR_VOCAB_SIZE = 1000  # ids 0..999; the tiny M-CLIP embedding table has 1005 rows
# frequent Chinese characters (plus the test prompt's), then frequent Japanese kanji; padded below
_CJK_COMMON = (
    "的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那后能对着事其里所去"
    "行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从知使点"
    "全明实已外把高意动些现开样长想正问力理本西头部新门工手期文什两很通最她第因关实东老女色红黄蓝绿白黑紫"
    "广场泰迪熊猫狗鸟鱼马牛羊花草树林山水火土石金木月星云雨雪风春夏秋冬城市街路车船飞机房屋桥河海湖岛田"
    "王朋友爱美丽画图像照片城堡宫殿塔楼窗户猫咪太阳光亮暗夜晚早晨午今昨明天空气温冷热雾冰海洋沙漠森林草原"
    "北南京英法德俄日韩语言字书笔纸桌椅床灯门钟表鞋衣服帽包杯碗盘刀叉食吃喝饭菜肉蛋果汁茶酒奶糖面包蛋糕"
    "站坐走跑跳唱歌舞读写听笑哭睡醒玩游戏球赛胜败快慢远近深浅宽窄厚薄软硬干湿新旧真假大小多少左右"
    "彩虹宇宙地球火箭机器人未来古代风景肖像油画水彩素描卡通动漫写实抽象超现实主义艺术家作品"
)
_CJK_PUNCT = "，。！？、：；“”‘’（）《》【】…—"
_XLMR_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _xlmr_pieces() -> list[str]:
    lower = "abcdefghijklmnopqrstuvwxyz"
    ru_lower = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
    arabic = [chr(c) for c in range(0x0621, 0x064B)]  # hamza .. yeh (incl. tatweel)
    kana = [chr(c) for c in range(0x3041, 0x3094)] + [chr(c) for c in range(0x30A1, 0x30F7)]
    pieces = ["▁", *lower, *lower.upper(), *"0123456789", *_XLMR_PUNCT]
    pieces += [*ru_lower, *ru_lower.upper(), *arabic, *_CJK_PUNCT, *kana]
    pieces += ["▁" + c for c in lower + ru_lower] + ["▁" + c for c in arabic if c.isalpha()]
    pieces = list(dict.fromkeys([*pieces, *_CJK_COMMON]))
    budget = XLMR_VOCAB_SIZE - 5  # <s> <pad> </s> <unk> ... <mask>
    code = 0x4E00
    while len(pieces) < budget:  # fill with the first unified ideographs (一丁七万丈三上下不与…)
        if chr(code) not in pieces:
            pieces.append(chr(code))
        code += 1
    return pieces[:budget]


def xlmr_tokenizer(folder: Path):
    """An XLM-RoBERTa tokenizer (Unigram over single characters and "▁x" pieces, 1000 ids), built offline.

    Special tokens as XLM-R: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last; post-processor "<s> X </s>";
    Metaspace pre-tokenizer; model_max_length 512. Saved to `folder` (tokenizer.json, tokenizer_config.json)
    and loaded back from there.
    """
    from tokenizers import AddedToken
    from transformers import XLMRobertaTokenizerFast

    # "▁x" scores above "▁" + "x", single characters all alike
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, -2.0 if p == "▁" else -6.0 if p.startswith("▁") else -5.0) for p in _xlmr_pieces()]
    vocab.append(("<mask>", 0.0))
    tok = XLMRobertaTokenizerFast(
        vocab=vocab,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, normalized=True, special=True),
        model_max_length=512,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    # not the reloaded copy: transformers 5 would write its loading kwargs (is_local, ...) into every re-save
    return tok


def mclip_text_encoder(seed: int = 0):
    """diffusers' MultilingualCLIP with the tiny M-CLIP config (XLM-R 32 wide, 5 layers, vocab 1005; 32 -> 32)."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    torch.manual_seed(seed)
    model = MultilingualCLIP(MCLIPConfig(**tiny_kwargs("tiny-k21", "text_encoder")))
    _jitter(model)
    return model.eval()


def _official_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def k21_decoder_components(
    workdir: Path, seed: int = 0, config: str = "tiny-k21", scheduler: str = "ddim"
) -> dict:
    """text_encoder, tokenizer, unet, scheduler, movq for KandinskyPipeline / Img2Img / Inpaint (by `config`).

    scheduler: "ddim" = the official repo's DDIMScheduler config, "ddpm" = the official ddpm_scheduler
    subfolder config, "tiny" = the DDIM kwargs of diffusers' tests (`config`'s own).
    """
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**tiny_kwargs(config, "unet"))
    movq = diffusers.VQModel(**tiny_kwargs(config, "movq"))
    _jitter(unet)
    _jitter(movq, 0.02)
    if scheduler == "ddim":
        name = "k21-inpaint.scheduler" if "inpaint" in config else "k21.scheduler"
        sched = diffusers.DDIMScheduler.from_config(_official_config(name))
    elif scheduler == "ddpm":
        sched = diffusers.DDPMScheduler.from_config(_official_config("k21.ddpm_scheduler"))
    elif scheduler == "tiny":
        sched = diffusers.DDIMScheduler(**tiny_kwargs(config, "scheduler"))
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}")
    return {
        "text_encoder": mclip_text_encoder(seed + 100),
        "tokenizer": xlmr_tokenizer(workdir / "xlmr_vocab"),
        "unet": unet.eval(),
        "scheduler": sched,
        "movq": movq.eval(),
    }


def k21_prior_components(workdir: Path, seed: int = 0) -> dict:
    """The tiny 2.1 prior: diffusers' 2.1 prior test dummies are the 2.2 ones, so these are too."""
    k21 = json.loads((CONFIGS / "tiny-k21-prior.json").read_text())["components"]
    k22 = json.loads((CONFIGS / "tiny-k22-prior.json").read_text())["components"]
    assert k21 == k22, "tiny-k21-prior.json no longer matches tiny-k22-prior.json"
    return k22_prior_components(workdir, seed)


def save_k21_repos(root: Path) -> dict[str, Path]:
    """diffusers-saved 2.1 repos laid out like the official ones.

    "prior" (KandinskyPriorPipeline), "decoder" (KandinskyPipeline, plus the official ddpm_scheduler/
    subfolder and a model card naming its prior), "inpaint" (KandinskyInpaintPipeline, 9-channel UNet, its
    model_index.json saying "KandinskyPipeline" as the official one does).
    """
    import diffusers

    prior = diffusers.KandinskyPriorPipeline(**k21_prior_components(root))
    decoder = diffusers.KandinskyPipeline(**k21_decoder_components(root))
    inpaint = diffusers.KandinskyInpaintPipeline(**k21_decoder_components(root, 1, "tiny-k21-inpaint"))
    paths = {"prior": root / "k21-prior", "decoder": root / "k21", "inpaint": root / "k21-inpaint"}
    prior.save_pretrained(paths["prior"])
    decoder.save_pretrained(paths["decoder"])
    inpaint.save_pretrained(paths["inpaint"])
    ddpm = paths["decoder"] / "ddpm_scheduler"
    ddpm.mkdir()
    shutil.copyfile(CONFIGS / "k21.ddpm_scheduler.json", ddpm / "scheduler_config.json")
    for key, name in (("decoder", "k21"), ("inpaint", "k21-inpaint")):
        # the official model_index.json files, verbatim: they name XLMRobertaTokenizerFast (an alias of
        # XLMRobertaTokenizer in transformers 5, which is what diffusers writes) and, for the inpainting
        # repo, "_class_name": "KandinskyPipeline"
        index = paths[key] / "model_index.json"
        official = _official_config(f"{name}.model_index")

        def parts(d: dict) -> dict:
            return {k: [v[0], v[1].removesuffix("Fast")] for k, v in d.items() if not k.startswith("_")}

        assert parts(json.loads(index.read_text())) == parts(official), index.read_text()
        index.write_text(json.dumps(official, indent=2) + "\n")
        (paths[key] / "README.md").write_text(K21_DECODER_CARD)
    return paths


# ---------------------------------------------------------------- Kandinsky 3

K3_REPO_ID = "kandinsky-community/kandinsky-3"
T5_PIECES = 997  # regular pieces: with <pad> </s> <unk>, ids 0..999; then the 100 sentinels (1100 ids)
T5_VOCAB_SIZE = 1128  # the tiny T5's embedding rows: 28 more than the tokenizer, as t5's 32128 for 32100
# characters of the test prompts (Russian, Chinese, German) missing from _CJK_COMMON, then more frequent ones
_CJK_K3 = "落脉晚霞夕阳峰岭峡谷瀑布溪流湖泊雪山冰川沙丘岩石悬崖洞穴森林竹松柏枫樱桃荷菊梅兰"
_LATIN_EXTRA = "äöüßÄÖÜéèêëàâçîïôûùÿñœæáíóúãõ"


def _t5_pieces() -> list[str]:
    lower = "abcdefghijklmnopqrstuvwxyz"
    ru_lower = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
    pieces = ["▁", *lower, *lower.upper(), *_LATIN_EXTRA, *"0123456789", *_XLMR_PUNCT]
    pieces += [*ru_lower, *ru_lower.upper(), *_CJK_PUNCT]
    pieces += ["▁" + c for c in lower + "äöü" + ru_lower] + [
        "▁" + c for c in lower.upper() + ru_lower.upper()
    ]
    pieces = list(dict.fromkeys([*pieces, *_CJK_COMMON, *_CJK_K3]))
    code = 0x4E00
    while len(pieces) < T5_PIECES:  # fill with the first unified ideographs
        if chr(code) not in pieces:
            pieces.append(chr(code))
        code += 1
    return pieces[:T5_PIECES]


def t5_tokenizer(folder: Path):
    """A T5 tokenizer (transformers' T5TokenizerFast, i.e. T5Tokenizer in transformers 5), built offline.

    Unigram over ~1000 pieces (single characters: Latin with German/French accents, Cyrillic, digits,
    punctuation, a few hundred CJK; "▁x" pieces for Latin and Cyrillic letters), laid out as t5's: <pad>=0
    </s>=1 <unk>=2, the pieces, then <extra_id_99> .. <extra_id_0> (ids 1000..1099). Metaspace
    pre-tokenizer, post-processor "X </s>", model_max_length 512, no normalizer (real T5's is a precompiled
    SentencePiece charsmap). Saved to `folder` (tokenizer.json, tokenizer_config.json).
    """
    from transformers import T5TokenizerFast

    # "▁x" scores above "▁" + "x", single characters all alike
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p, -2.0 if p == "▁" else -6.0 if p.startswith("▁") else -5.0) for p in _t5_pieces()]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=512)
    assert len(tok) == T5_PIECES + 103 <= T5_VOCAB_SIZE
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return tok  # not the reloaded copy (see xlmr_tokenizer)


def t5_text_encoder(seed: int = 0):
    """transformers' T5EncoderModel, tiny (d_model 32 = the tiny UNet's encoder_hid_dim, 2 layers, 4 heads,
    8 buckets, vocab 1128) with the official K3 encoder's gated-SiLU feed-forward (FLAN-UL2), in eval mode."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        vocab_size=T5_VOCAB_SIZE,
        feed_forward_proj="gated-silu",
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(config)
    _jitter(model)
    return model.eval()


def k3_components(workdir: Path, seed: int = 0) -> dict:
    """unet, scheduler (the official DDPM config), movq, text_encoder, tokenizer for Kandinsky3Pipeline and
    Kandinsky3Img2ImgPipeline (diffusers' tiny test sizes; the tiny MoVQ downsamples by 2 only)."""
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.Kandinsky3UNet(**tiny_kwargs("tiny-k3", "unet"))
    movq = diffusers.VQModel(**tiny_kwargs("tiny-k3", "movq"))
    _jitter(unet)
    _jitter(movq, 0.02)
    text_encoder = t5_text_encoder(seed + 100)
    assert unet.config.encoder_hid_dim == text_encoder.config.d_model
    return {
        "unet": unet.eval(),
        "scheduler": diffusers.DDPMScheduler.from_config(_official_config("k3.scheduler")),
        "movq": movq.eval(),
        "text_encoder": text_encoder,
        "tokenizer": t5_tokenizer(workdir / "t5_vocab"),
    }


def save_k3_repo(root: Path, text_encoder_dtype: str = "float32") -> Path:
    """A diffusers-saved Kandinsky 3 repo (root/"kandinsky-3") laid out as the official one.

    Both weight sets, as the official repo: the fp16 variant (`*.fp16.safetensors`, saved first) and the
    plain float32 files (saved last, so text_encoder/config.json says "dtype": "float32"). The official
    text_encoder/config.json says "torch_dtype": "float16", which transformers 5 honours when no dtype is
    asked for (fp16 T5 beside a float32 UNet); `text_encoder_dtype="float16"` writes that instead.
    model_index.json is the official one verbatim.
    """
    import copy

    import diffusers

    components = k3_components(root)
    folder = root / "kandinsky-3"
    models = ("unet", "movq", "text_encoder")
    half = {k: copy.deepcopy(v).to(torch.float16) if k in models else v for k, v in components.items()}
    diffusers.Kandinsky3Pipeline(**half).save_pretrained(folder, variant="fp16")
    diffusers.Kandinsky3Pipeline(**components).save_pretrained(folder)
    config = folder / "text_encoder" / "config.json"
    saved = json.loads(config.read_text())
    assert saved.get("dtype") == "float32", saved
    if text_encoder_dtype != "float32":
        saved["dtype"] = text_encoder_dtype
        config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    index = folder / "model_index.json"
    official = _official_config("k3.model_index")

    def parts(d: dict) -> dict:
        return {k: v for k, v in d.items() if not k.startswith("_")}

    assert parts(json.loads(index.read_text())) == parts(official), index.read_text()
    index.write_text(json.dumps(official, indent=2) + "\n")
    return folder
