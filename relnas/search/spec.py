"""What defines a search: :class:`SearchSpec`, one frozen record built once from the config
(:func:`search_spec`), stored in the search checkpoint (as a plain dict) and compared field by
field when the search is resumed (:meth:`SearchSpec.changes_from`); docs/resume.md lists the
fields.

The spec lists what the search computes with: the seed, the strategy and its sizes, the weight
set, the data (the images, their split, batches and augmentation), each candidate's optimizer and
schedule, the order of the Eq. 6 merges and the arithmetic. Whatever it does not list cannot change
the result and may differ on resume: where the data lives and how it is loaded, the executor's
processes beyond its merge order, CUDA graphs and memory format, logging, progress and plots, and
``search.max_diverged_share`` (it judges the finished search, it computes nothing).

One field may change: a RelativeNAS search without ``search.budget`` may grow
``search.generations`` (it continues from its state with a cosine schedule over the larger number
of generations, so a finished search is extended).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

#: the data keys that define the images, the split, the batches and the augmentation (a key of a
#: data config that is not here says where the data lives or how it is loaded)
DATA_FIELDS = ("_target_", "batch_size", "eval_batch_size", "train_portion", "split_seed", "val_size", "subset",
               "augment", "crop_padding", "flip", "cutout", "color_jitter", "crop_scale", "seed", "mean", "std",
               "image_size", "in_channels", "num_classes", "num_train", "num_test", "test_size", "dataset_seed",
               "signal", "noise", "train_dir", "val_dir")
#: the keys of the module node that define each candidate's optimizer step (the others choose how
#: the step runs: memory format, CUDA graphs)
MODULE_FIELDS = ("_target_", "momentum", "weight_decay", "grad_clip")
#: the keys of the strategy node that are fields of their own (the strategy's sizes)
_SIZES = ("population_size", "generations", "budget")


def _key(name: str) -> Dict[str, str]:
    return {"key": name}


@dataclass(frozen=True)
class SearchSpec:
    """The fields that define a search, each named by the config key it is read from
    (``metadata["key"]``); mappings hold a config node's entries."""

    seed: int = field(metadata=_key("seed"))
    strategy: Mapping[str, Any] = field(metadata=_key("strategy"))  # the class and its options
    population_size: int = field(metadata=_key("search.population_size"))
    generations: int = field(metadata=_key("search.generations"))
    budget: Optional[int] = field(metadata=_key("search.budget"))
    weight_set: Mapping[str, Any] = field(metadata=_key("supernet"))
    data: Mapping[str, Any] = field(metadata=_key("data"))  # DATA_FIELDS
    train_portion: float = field(metadata=_key("search.train_portion"))
    subset: Optional[int] = field(metadata=_key("search.subset"))
    val_augment: bool = field(metadata=_key("search.val_augment"))
    module: Mapping[str, Any] = field(metadata=_key("module"))  # MODULE_FIELDS
    lr: float = field(metadata=_key("search.lr"))
    lr_min: float = field(metadata=_key("search.lr_min"))
    drop_path_prob: float = field(metadata=_key("search.drop_path_prob"))
    drop_path_ramp: bool = field(metadata=_key("search.drop_path_ramp"))
    merge: str = field(metadata=_key("search.merge"))  # when the Eq. 6 merges happen (from search.executor)
    precision: str = field(metadata=_key("trainer.precision"))  # the candidates' arithmetic

    def to_dict(self) -> Dict[str, Any]:
        """The spec as plain containers (what the checkpoint stores)."""
        return asdict(self)

    def extensible(self) -> bool:
        """Whether a resume may grow ``search.generations``: a RelativeNAS search whose number of
        generations is not fixed by ``search.budget``."""
        from hydra.utils import get_class

        from relnas.search.strategies import RelativeNAS

        try:
            relativenas = issubclass(get_class(str(self.strategy.get("_target_"))), RelativeNAS)
        except Exception:  # noqa: BLE001 - a class that cannot be imported extends nothing
            relativenas = False
        return relativenas and self.budget is None

    def changes_from(self, saved: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
        """Compare the spec a checkpoint stored (``saved``, from :meth:`to_dict`) with this one,
        field by field: ``(changes that refuse the resume, allowed extensions)``, each as
        ``"<config key> (<saved> -> <current>)"``."""
        before, now = _flat(saved), _flat(self.to_dict())
        refused, extended = [], []
        for key in sorted(set(before) | set(now)):
            a, b = before.get(key, "<unset>"), now.get(key, "<unset>")
            if a == b:
                continue
            line = f"{key} ({a!r} -> {b!r})"
            grows = (key == "search.generations" and isinstance(a, int) and isinstance(b, int) and b > a)
            (extended if grows and self.extensible() else refused).append(line)
        return refused, extended


def _flat(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """``{config key: value}`` for every leaf of a spec dict (a node's entries as ``node.key``)."""
    out: Dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        else:
            out[key] = value

    for f in fields(SearchSpec):
        walk(spec.get(f.name, "<unset>"), f.metadata["key"])
    return out


def _node(cfg: DictConfig, key: str) -> Dict[str, Any]:
    node = OmegaConf.select(cfg, key)
    return dict(OmegaConf.to_container(node, resolve=True)) if node is not None else {}


def search_spec(cfg: DictConfig) -> SearchSpec:
    """The spec of the search ``cfg`` configures (its strategy selected: see
    :func:`relnas.search.run.resolve_config`)."""
    from relnas.search.executors import executor_name, merge_order

    s = cfg.search
    strategy = _node(cfg, "strategy")
    data, module = _node(cfg, "data"), _node(cfg, "module")

    def optional_int(value: Any) -> Optional[int]:
        return None if value is None else int(value)

    return SearchSpec(
        seed=int(cfg.seed),
        strategy={k: v for k, v in strategy.items() if k not in _SIZES},
        population_size=int(strategy.get("population_size", s.get("population_size"))),
        generations=int(strategy.get("generations", s.get("generations"))),
        budget=optional_int(strategy.get("budget", s.get("budget"))),
        weight_set=_node(cfg, "supernet"),
        data={k: data[k] for k in DATA_FIELDS if k in data},
        train_portion=float(s.train_portion),
        subset=optional_int(s.get("subset")),
        val_augment=bool(s.get("val_augment", False)),
        module={k: module[k] for k in MODULE_FIELDS if k in module},
        lr=float(s.lr),
        lr_min=float(s.lr_min),
        drop_path_prob=float(s.drop_path_prob),
        drop_path_ramp=bool(s.drop_path_ramp),
        merge=merge_order(executor_name(s.get("executor"))),
        precision=str(OmegaConf.select(cfg, "trainer.precision", default="32-true")),
    )
