"""Files the tasks read and write: results JSON, Lightning checkpoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch

from relnas.errors import CheckpointError


def write_json(path: Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def append_markdown(path: Path, title: str, text: str) -> Path:
    """Append ``text`` to the Markdown record ``path`` (parents made), starting a new file with the
    heading ``# title``; returns the path. The experiments' results files grow this way, one
    dated section per run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(f"# {title}\n\n")
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def load_checkpoint_dict(path: Path) -> Dict[str, Any]:
    """Read a Lightning checkpoint of ours (weights only when possible)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first}") from None
