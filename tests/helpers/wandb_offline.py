"""Read an offline W&B run's ``.wandb`` file back (tests only): the file is a 7-byte header
(``:W&B``, magic, version) followed by LevelDB-log records (CRC32C, length, type; 32 KiB
blocks) holding ``wandb_internal_pb2.Record`` protobufs."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, List

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> List[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, out, parts = 7, [], []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # block padding
            pos += left
            continue
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            parts = [payload]
        elif kind == FIRST:
            parts = [payload]
            continue
        elif kind == MIDDLE:
            parts.append(payload)
            continue
        elif kind == LAST:
            parts.append(payload)
        r = pb.Record()
        r.ParseFromString(b"".join(parts))
        out.append(r)
    return out


def summary(path: Path) -> Dict[str, Any]:
    """The run record (id, name, group, tags), its config (nested keys as nested dicts) and its
    history rows (nested keys joined by ``/``)."""
    run: Dict[str, Any] = {"config": {}, "history": []}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group, tags=list(r.run.tags))
            for u in r.run.config.update:
                run["config"][u.key] = json.loads(u.value_json)
        elif kind == "config":
            for u in r.config.update:
                if u.key:
                    run["config"][u.key] = json.loads(u.value_json)
                else:  # a nested key, e.g. ("_wandb", "visualize", <chart key>) of a custom chart
                    node = run["config"]
                    for part in u.nested_key[:-1]:
                        node = node.setdefault(part, {})
                    node[u.nested_key[-1]] = json.loads(u.value_json)
        elif kind == "history":
            run["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return run
