"""Small helpers both stages share, written once: hashing, atomic writes, autocast, local state, and
the text sanitisers (`for_terminal`, `for_csv`, `for_markdown`, `for_html`, `for_plot`).

Nothing heavy at import time (torch is imported inside ``autocast``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
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
        dtype = torch.bfloat16 if _bf16(str(device)) else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if enabled and cpu and str(device) == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pins_for(device: Any) -> bool:
    """Whether host memory bound for ``device`` is pinned first: only for a CUDA target on a machine
    with CUDA. A ``non_blocking`` copy from pageable memory is synchronous (the driver stages it);
    from pinned memory it is a DMA that overlaps the host's work (issue 21 #8). Elsewhere nothing
    changes: the CPU path allocates and copies exactly as before. Used by both stages."""
    import torch

    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def pinned_to(x: Any, device: Any) -> Any:
    """Tensor ``x`` on ``device``; a CPU tensor bound for CUDA (``pins_for``) is pinned and copied
    with ``non_blocking=True`` (torch keeps a pinned block from reuse until its copy ends, so a
    temporary is safe); otherwise a plain ``.to``."""
    if x.device.type == "cpu" and pins_for(device):
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    return x.to(device)


def _bf16(device: str) -> bool:
    """Whether the GPU ``device`` names (``cuda:1``: the second) has bf16; ``is_bf16_supported``
    asks only the current device, which is cuda:0 unless set (#10)."""
    import torch

    with torch.cuda.device(torch.device(device)):
        return torch.cuda.is_bf16_supported()


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


def require_device(device: str, flag: str = "--device") -> str:
    """``check_device``, and the GPU it names must be there: ``cuda`` on a machine where torch sees
    no CUDA device (no GPU, no driver, a CPU-only torch build), or ``cuda:N`` past the last GPU, is a
    ``ConfigError`` naming ``flag`` before any work starts (instead of a traceback from inside torch)."""
    from aver.errors import ConfigError

    check_device(device)
    if not str(device).startswith("cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"{flag} {device}: torch {torch.__version__} ({build}) sees no CUDA GPU on this machine "
            "(no GPU, or no NVIDIA driver): use --device cpu, or run where a GPU is"
        )
    n, index = torch.cuda.device_count(), str(device).partition(":")[2]
    if index and int(index) >= n:
        raise ConfigError(f"{flag} {device}: this machine has {n} CUDA GPU(s): cuda:0 to cuda:{n - 1}")
    return device


def check_out_dir(path: str | os.PathLike[str], flag: str) -> str:
    """Refuse, before any work, a folder ``path`` (given by ``flag``) that cannot be made or written:
    an existing file, a file where a parent folder should be, or a place the OS will not let us
    write (checked by making and removing a temporary folder in the nearest existing parent, which
    holds for root too). Creates nothing; a URL (``s3://...``) is left to its storage."""
    import tempfile

    from aver.errors import ConfigError

    if "://" in str(path):
        return str(path)
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p}: is a file, not a folder: give a folder path (it is created)")
    parent = next((a for a in (p, *p.parents) if a.exists() or a.is_symlink()), Path("."))
    if not parent.is_dir():
        raise ConfigError(f"{flag} {p}: {parent} is a file, so no folder can be made under it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".aver-probe-", dir=parent))
    except OSError as e:
        raise ConfigError(
            f"{flag} {p}: cannot write in {parent} ({e.strerror or type(e).__name__}): choose a folder "
            "you can write to"
        ) from None
    return str(path)


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


# -- text from files and ids, made safe for where it is written ------------------------------
# Clip ids, file names, class names, errors and notes come from data folders and caches: any of
# them may hold terminal escape sequences (ESC [2J clears the screen, ESC ]8;; makes a hyperlink),
# newlines that forge extra lines, or bidi overrides that reorder what is shown. Every writer
# passes such text through one of these functions, chosen by where the text goes.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet evaluates a cell starting so


def for_terminal(value: Any) -> str:
    """``value`` as one line of inert text: every character that is not printable (C0 and C1
    controls, DEL, ESC / OSC sequences, newlines, tabs, bidi overrides U+202A-202E and isolates
    U+2066-2069, other format characters) is shown as its ``\\x1b`` / ``\\u202e``-style escape."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def for_csv(value: Any) -> str:
    """A text cell for a CSV read by people and spreadsheets: ``for_terminal``, and a leading
    ``= + - @`` (or tab / CR) gets a leading quote, so Excel, LibreOffice and Sheets show the cell
    instead of evaluating it as a formula (``=HYPERLINK(...)``, ``+cmd|...``, ``@SUM(...)``)."""
    text = str(value)
    return ("'" if text.startswith(_FORMULA) else "") + for_terminal(text)


def for_markdown(value: Any) -> str:
    """Text for a Markdown table cell or line: ``for_terminal``, ``|`` escaped as ``\\|`` (it would
    end the cell) and ``<`` / ``>`` as entities (Markdown renderers pass raw HTML through)."""
    return for_terminal(value).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def for_html(value: Any) -> str:
    """Text for an HTML page (element or quoted attribute): ``for_terminal``, then HTML-escaped."""
    import html

    return html.escape(for_terminal(value), quote=True)


def for_plot(value: Any) -> str:
    """Text for a matplotlib label or title: ``for_terminal`` with ``$`` escaped (mathtext would
    parse ``$...$`` and fail on a malformed expression)."""
    return for_terminal(value).replace("$", r"\$")


def echo(line: Any) -> None:
    """Print ``line`` to stdout as one line (``for_terminal``): the way the command line prints."""
    print(for_terminal(line))


class InertFormatter(logging.Formatter):
    """Log lines name clips and files: their control characters are shown escaped, never acted on
    (the terminal and every log file, ``train.log`` included)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = for_terminal(record.message)
        return super().formatMessage(record)
