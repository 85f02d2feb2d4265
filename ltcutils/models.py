"""Load open_clip ViT models (by name + pretrained tag, or a local checkpoint) for the workbook.

Example (random weights, the tiny config shipped with the package)::

    >>> import ltcutils as ltc
    >>> m = ltc.models.load_model("ltc-tiny", pretrained=None)
    >>> m.hooked.cfg.n_layers, m.hooked.cfg.n_heads
    (4, 4)

OpenAI weights were trained with QuickGELU. open_clip's plain names (``ViT-B-16``) build GELU;
:func:`load_model` switches to QuickGELU automatically when a pretrained *tag* asks for it. A
*local file* carries no such flag: pass ``quick_gelu=True`` for OpenAI-trained weights (or use
the ``-quickgelu`` model name), otherwise the embeddings are silently slightly wrong.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .hooked import HookedViT
from .resources import data_dir

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "load_model",
    "load_default",
    "DEFAULT_CHECKPOINT",
    "TINY_MODEL",
    "file_sha256",
    "check_model_name",
    "check_device",
    "weights_sha256",
]

TINY_MODEL = "ltc-tiny"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_DATA_DIR = data_dir()
#: The tiny CLIP trained by the project on the synthetic benchmark (see data/MODEL_CARD.md).
DEFAULT_CHECKPOINT = _DATA_DIR / "ltc-tiny-synthetic.safetensors"


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded."""


@dataclass
class LoadedModel:
    """An open_clip CLIP model with its hooked image tower, transform and tokenizer.

    Attributes:
        clip: the open_clip model (eval mode).
        hooked: :class:`~ltcutils.hooked.HookedViT` sharing the image tower's weights.
        preprocess: PIL image -> ``[3, H, W]`` tensor (open_clip's eval transform).
        tokenizer: list of strings -> ``[n, context_length]`` token ids.
        name, pretrained: what was asked for (``pretrained`` is a tag, a file path or None).
        fingerprint: identifies the weights by content: ``tag:<name>/<tag>``, ``sha256:<file hash>``,
            or ``random:sha256:<hash of the weights>`` for random weights (two seeds differ).
    """

    clip: torch.nn.Module
    hooked: HookedViT
    preprocess: Callable
    tokenizer: Callable
    name: str
    pretrained: str | None
    fingerprint: str
    device: torch.device

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text embeddings ``[len(texts), d_embed]`` (L2-normalised unless ``normalize=False``)."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings, got a single string")
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            out.append(self.clip.encode_text(tokens).float())
        emb = torch.cat(out) if out else torch.zeros(0, self.hooked.cfg.d_embed, device=self.device)
        return F.normalize(emb, dim=-1) if normalize else emb

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``[batch, d_embed]`` through the hooked tower."""
        return self.hooked(pixels.to(self.device), normalize=normalize)

    def describe(self) -> dict:
        """Small JSON-able description used in fingerprints and metadata."""
        return {"model": self.name, "pretrained": self.pretrained, "weights": self.fingerprint,
                "dtype": str(next(self.hooked.parameters()).dtype), "vit": self.hooked.cfg.to_dict()}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_device(device: str | torch.device) -> torch.device:
    """The device, if torch can place a tensor there on this machine.

    Raises:
        ModelLoadError: an unknown device string, or one this machine does not have.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{device!r} is not a device name torch understands ({exc}); use device='cpu'") from exc
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:  # torch raises AssertionError for a build without the backend
        have = ["cpu"]
        acc = getattr(torch, "accelerator", None)
        if acc is not None and acc.is_available():
            have.append(str(acc.current_accelerator()))
        raise ModelLoadError(f"device {str(device)!r} is not available on this machine (torch cannot place a "
                             f"tensor there); available: {', '.join(have)}. "
                             f"Pass device='cpu'{' or one of those' if len(have) > 1 else ''}.") from exc
    return dev


def check_model_name(name: str) -> dict:
    """The open_clip config of ``name``, if it is a ViT that LTC can read.

    Raises:
        ModelLoadError: an unknown name (with close matches) or a tower without attention heads.
    """
    import open_clip

    _register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        vits = [m for m in open_clip.list_models() if m.startswith("ViT")]
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
        raise ModelLoadError(
            f"unknown model name {name!r}. Did you mean one of {close}? "
            f"ViT models open_clip knows include {vits[:12]} ... and {TINY_MODEL!r}."
        )
    kind = _vision_kind(cfg)
    if kind is not None:
        raise ModelLoadError(
            f"{name} has a {kind} image tower, not a ViT: LTC needs attention heads. "
            "Use a ViT model such as ViT-B-16, ViT-L-14 or ViT-H-14."
        )
    return cfg


def _register_configs() -> None:
    import open_clip

    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def _vision_kind(cfg: dict) -> str | None:
    """Name of a non-ViT image tower, or None for a ViT."""
    v = cfg.get("vision_cfg", {})
    if v.get("timm_model_name"):
        return f"timm model {v['timm_model_name']!r}"
    if isinstance(v.get("layers"), (list, tuple)):
        return "ModifiedResNet"
    return None


def load_model(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> LoadedModel:
    """Build an open_clip ViT and its hooked image tower.

    Args:
        name: open_clip model name (``"ViT-B-16"``, ``"ViT-L-14"``, ``"ViT-H-14"``, ...) or
            ``"ltc-tiny"``.
        pretrained: a pretrained tag (``"laion2b_s34b_b88k"``; weights from the local cache), a
            path to a checkpoint file (``.safetensors``, or ``.bin``/``.pt`` read with
            ``weights_only=True``), or None for random weights.
        device: where the model lives (default CPU).
        precision: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``.
        quick_gelu: force QuickGELU (True) or GELU (False); None decides from the tag.
        cache_dir: open_clip / Hugging Face cache directory for tagged weights.

    Raises:
        ModelLoadError: unknown name or tag, weights not available offline, missing or corrupt
            checkpoint file, or a tower that is not a ViT (LTC needs attention heads).
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = check_model_name(name)
    device = check_device(device)

    force_qg = bool(quick_gelu)
    fingerprint = "random"
    pretrained_arg: str | None = None
    if pretrained is not None:
        p = str(pretrained)
        tag_cfg = get_pretrained_cfg(name, p)
        if tag_cfg:
            pretrained_arg = p
            fingerprint = f"tag:{name}/{p}"
            if quick_gelu is None and tag_cfg.get("quick_gelu") and not cfg.get("quick_gelu"):
                force_qg = True
        elif os.path.sep in p or p.endswith((".safetensors", ".bin", ".pt", ".pth")) or Path(p).exists():
            path = Path(p).expanduser()
            if not path.is_file():
                raise ModelLoadError(
                    f"checkpoint file not found: {path}. Pass the path of an open_clip checkpoint "
                    "(.safetensors, .bin or .pt), a pretrained tag, or None for random weights."
                )
            pretrained_arg = str(path)
            fingerprint = f"sha256:{file_sha256(path)}"
        else:
            tags = list_pretrained_tags_by_model(name)
            raise ModelLoadError(
                f"{p!r} is neither a pretrained tag of {name} nor an existing file. "
                f"Tags for {name}: {tags or 'none'}."
            )

    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained_arg, precision=precision, device=device,
            force_quick_gelu=force_qg, cache_dir=cache_dir, weights_only=True,
        )
    except Exception as exc:  # open_clip raises RuntimeError, safetensors/torch their own
        raise _explain_load_failure(name, pretrained_arg, exc) from exc
    clip.eval()
    if pretrained is None:
        fingerprint = f"random:sha256:{weights_sha256(clip)}"
    try:
        hooked = HookedViT.from_open_clip(clip)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc
    hooked.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(clip, hooked, preprocess, tokenizer, name, None if pretrained is None else str(pretrained),
                       fingerprint, device)


def _explain_load_failure(name: str, pretrained: str | None, exc: Exception) -> ModelLoadError:
    from open_clip.pretrained import get_pretrained_cfg

    text = " ".join(str(exc).split())
    if pretrained is not None and Path(pretrained).is_file() and _is_unsafe_pickle(exc):
        return ModelLoadError(
            f"checkpoint {pretrained} holds pickled Python objects beyond tensors and is refused: loading it "
            "could run arbitrary code. Where you trust the file, extract its state dict and save it with "
            "safetensors.torch.save_file, then pass that .safetensors path."
        )
    if pretrained is not None and Path(pretrained).is_file():
        return ModelLoadError(
            f"could not load checkpoint {pretrained} into {name}: {type(exc).__name__}: {text}. "
            "Is the file complete (compare its size/hash with the source) and made for this architecture? "
            "For OpenAI-trained weights pass quick_gelu=True."
        )
    if pretrained is not None:
        hub = (get_pretrained_cfg(name, pretrained) or {}).get("hf_hub", "")
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        return ModelLoadError(
            f"weights for {name} / {pretrained!r} are not available"
            f"{' offline (HF_HUB_OFFLINE is set)' if offline else ''}: {exc}. On a machine with internet run "
            f"open_clip.create_model({name!r}, pretrained={pretrained!r}) once and copy the Hugging Face cache, "
            f"or download the checkpoint{f' from hf-hub:{hub.rstrip(chr(47))}' if hub else ''} and pass its path as "
            "pretrained='/path/to/open_clip_pytorch_model.bin'."
        )
    return ModelLoadError(f"could not build {name}: {type(exc).__name__}: {exc}")


def _is_unsafe_pickle(exc: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a pickle (anywhere in the exception chain)."""
    import pickle

    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def load_default(device: str | torch.device = "cpu", checkpoint: str | os.PathLike | None = None) -> LoadedModel:
    """The embedded default: the tiny CLIP trained on the synthetic benchmark."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise ModelLoadError(
            f"the embedded default checkpoint {path} is missing. It ships in data/; in a fresh clone "
            "it is there unless it was deleted. Rebuild it with `python -m ltcutils.train --out "
            f"{path}` (about 8 minutes on 2 CPU cores)."
        )
    return load_model(TINY_MODEL, pretrained=path, device=device)
