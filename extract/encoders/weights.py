"""Reading and writing encoder weight files in the formats real checkpoints come in.

Supported inputs: ``.safetensors``; a pickled state_dict (``.pt``/``.pth``/``.bin``) loaded with
``weights_only=True``, possibly nested (``{"state_dict": ...}``, ``{"model": ...}``) or saved from a
``DataParallel`` (``module.`` prefixes); and, only on explicit opt-in, a pickled whole module (the
Savchenko EmotiEffLib ``enet_b2_*.pt`` files), whose unpickling executes code from the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from aver.errors import ConfigError, MissingWeightsError
from aver.utils import save_safetensors as _save
from aver.utils import sha256_file

# Keys under which training scripts commonly nest the real state_dict.
_NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_STRIP_PREFIXES = ("module.", "model.")


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over every key name and the raw bytes of its tensor, in the mapping's order.

    Identifies in-memory weights (a random init) the way ``sha256_file`` identifies a file.
    """
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        # Viewing as bytes works for every dtype (bfloat16 has no numpy equivalent).
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _pickled_module_error(path: Path, cause: Exception, section: str) -> ConfigError:
    found = re.search(r"GLOBAL (\S+)", str(cause))
    stored = f"it stores {found.group(1)}" if found else str(cause).splitlines()[0][:200]
    return ConfigError(
        f"{path}: the file is a pickled Python object, not a plain state_dict ({stored}); for example a "
        f"whole module saved with torch.save(model), as the EmotiEffLib enet_b2_*.pt releases are. "
        f"Unpickling it executes code stored in the file. If you trust its source, opt in with "
        f"{section}.allow_pickle=true (CLI --allow-pickle); better, re-save it once as safetensors with "
        f"`aver convert-weights` (which takes the same opt-in) and point {section}.weights at that file."
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Peel common nestings off a loaded checkpoint until a flat name -> tensor mapping remains."""
    for _ in range(4):
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        nested = [k for k in _NEST_KEYS if k in obj and isinstance(obj[k], Mapping | torch.nn.Module)]
        if nested and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[nested[0]]
            continue
        break
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path}: expected a state_dict (name -> tensor), found {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ConfigError(f"{path}: no tensors found; top-level keys: {sorted(map(str, obj))[:8]}")
    for prefix in _STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _check_torch_file(p: Path) -> None:
    """Refuse a file that is neither a torch zip checkpoint nor a pickle (a text file, an HTML error
    page saved as ``.pt``, a truncated download): the unpickler would fail on it with any error."""
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip, or pickle protocol >= 2
        return
    raise ConfigError(
        f"{p}: not a weight file (a .safetensors file, or a torch checkpoint: a zip or a pickle); it "
        f"starts with {head!r}. Check the path, or download the weights again"
    )


def load_state_dict(
    path: str | os.PathLike[str], allow_pickle: bool = False, section: str = "image"
) -> dict[str, torch.Tensor]:
    """Load a weight file into a flat ``{name: tensor}`` dict on CPU.

    ``.safetensors`` files are read directly. Other files go through ``torch.load(weights_only=True)``;
    a file that holds pickled Python objects (a whole ``nn.Module``) is refused with a ``ConfigError``
    unless ``allow_pickle`` is true, in which case it is unpickled (this runs code from the file) and
    its ``state_dict()`` is returned. Raises ``MissingWeightsError`` when the file does not exist.
    ``section`` names the config section (``image``, ``flow``) that the error messages point at.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"weight file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as err:  # safetensors raises its own untyped errors for corrupt headers
            raise ConfigError(f"{p}: not a readable safetensors file ({err})") from err
    _check_torch_file(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise _pickled_module_error(p, err, section) from err
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err2:
            raise ConfigError(
                f"{p}: cannot be unpickled as a weight file ({type(err2).__name__}: {err2})"
            ) from err2
        except (AttributeError, ModuleNotFoundError, ImportError) as err2:
            raise ConfigError(
                f"{p}: unpickling failed ({err2}); the module classes stored in the file do not exist in "
                f"the installed libraries (pickled modules break across timm versions). Load it where the "
                f"original timm version is installed and save model.state_dict() instead."
            ) from err2
    except (RuntimeError, EOFError, OSError) as err:
        raise ConfigError(f"{p}: not a readable torch checkpoint ({err})") from err
    return _unwrap(obj, p)


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> str:
    """Write ``state_dict`` as a ``.safetensors`` file atomically; return the file's sha256.

    Tensors are moved to CPU, made contiguous and copied so that tensors sharing storage (tied or
    viewed weights), which safetensors refuses, are stored independently. The file is written to a
    temporary name in the same folder and renamed, so a concurrent reader never sees half a file.
    """
    return sha256_file(_save(state_dict, path))
