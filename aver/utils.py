"""Small helpers both stages share, written once: hashing, atomic writes, autocast, local state.

Nothing heavy at import time (torch is imported inside ``autocast``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk_bytes`` pieces (weight files reach gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def json_hash(obj: Any, length: int = 16) -> str:
    """sha256 (first ``length`` hex digits) of ``obj``'s canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it into place.

    Readers see the old file or the new one, never half of one; a crash leaves at most a
    ``.<name>.<pid>.tmp`` file next to ``path``. The suffix is kept (safetensors and PyAV look at it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def autocast(device: str, enabled: bool = True, cpu: bool = False) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for inference and training: bf16 autocast on CUDA (fp16 where the GPU has no
    bf16); on the CPU only when ``cpu`` is true (bf16, fast on CPUs with AMX / AVX-512 BF16;
    otherwise CPU results stay float32); a no-op when ``enabled`` is false."""
    import torch

    if enabled and str(device).startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if enabled and cpu and str(device) == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def aver_home() -> Path:
    """Where aver keeps materialised tiny models and other local state (``$AVER_HOME``)."""
    return Path(os.environ.get("AVER_HOME", Path.home() / ".cache" / "aver")).expanduser()


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; anything else is a ``ConfigError``."""
    from aver.errors import ConfigError

    head, _, index = str(device).partition(":")
    if head == "cpu" and not index or head == "cuda" and (not index or index.isdigit()):
        return device
    raise ConfigError(f"device must be cpu, cuda or cuda:N, not {device!r}")


def save_safetensors(
    tensors: dict[str, Any], path: str | os.PathLike[str], metadata: dict | None = None
) -> Path:
    """Write torch ``tensors`` as a ``.safetensors`` file atomically (never pickled).

    Tensors are moved to the CPU, made contiguous and copied, so tensors that share storage (tied or
    viewed weights), which safetensors refuses, are stored independently.
    """
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {"format": "pt", **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=meta))


def printable(value: Any) -> str:
    """``value`` as text safe for a terminal: control characters (escape sequences, newlines, tabs,
    bidi overrides) are shown as ``\\x1b``-style escapes instead of acting on the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def csv_text(value: Any) -> str:
    """A text cell safe for spreadsheets: a leading ``= + - @`` (or tab / CR) would make Excel,
    LibreOffice and Sheets evaluate the cell as a formula, so such cells get a leading quote."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
