"""Tables read through the Hugging Face `datasets` library: .parquet and .arrow files, folders written by
`Dataset.save_to_disk` / `DatasetDict.save_to_disk`, and hub datasets (`hub:OWNER/NAME`).

One rule names a split everywhere, as for the builtin datasets (`sst2:dev`): after the last colon of the
spec. `hub:nyu-mll/glue:validation` is the validation split of the hub dataset nyu-mll/glue, its subset
(configuration, "mrpc") in `data.subset`; `glue_dd:test` is the test split of a DatasetDict folder. A
.parquet or .arrow file is one split and takes no `:SPLIT`. A spec without a split reads `train` for
data.train and `validation` for data.eval.

Offline (HF_HUB_OFFLINE=1) `datasets.load_dataset` reads a hub dataset from the datasets cache
(HF_DATASETS_CACHE, by default HF_HOME/datasets) where an earlier download left it: datasets' "cache"
builder (datasets/packaged_modules/cache/cache.py) looks in `<cache>/<namespace>___<name>/<subset>/
<version>/<hash>/`. Reading never unpickles: parquet, Arrow IPC and JSON metadata only (datasets 4 and
later run no dataset scripts). The library's docs: https://huggingface.co/docs/datasets/loading

Every bad input is a UserError naming the file or dataset and what exists: the splits of a dataset, the
subsets of a hub dataset, the columns of a table.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.console import say
from lmforge.errors import UserError, cut, first_line, shown

HUB_PREFIX = "hub:"
TABLE_SUFFIXES = (".parquet", ".arrow")
# A hub dataset id: NAME or OWNER/NAME, letters, digits, "-", "_" and "." (huggingface_hub's repo id rule)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
# The split a spec without one reads: data.train -> train; data.eval (whose builtin default is "dev") ->
# validation, the name hub datasets and DatasetDict folders use.
DEFAULT_SPLIT = {"train": "train", "dev": "validation"}


@dataclass
class Table:
    """One split of a dataset: the `datasets.Dataset` and how messages name it."""

    dataset: object  # datasets.Dataset
    source: str  # "hub:nyu-mll/glue:train (subset mrpc)", "data/dev.parquet", "glue_dd:validation"


def is_table_spec(spec: str) -> bool:
    """Whether `spec` names data this module reads: `hub:...`, a .parquet / .arrow file, or a folder
    (optionally `FOLDER:SPLIT`) that exists."""
    if spec.startswith(HUB_PREFIX):
        return True
    folder, _, split = spec.rpartition(":")
    if split and Path(folder).expanduser().suffix.lower() in TABLE_SUFFIXES:
        return True  # `file.parquet:train`: refused in open_table with the reason
    path = Path(spec).expanduser()
    return path.suffix.lower() in TABLE_SUFFIXES or path.is_dir() or bool(folder and Path(folder).expanduser().is_dir())


def open_table(spec: str, default_split: str = "train", subset: str = "") -> Table:
    """The split `spec` names (see the module docstring); `default_split` is load_examples' ("train" or
    "dev"), `subset` data.subset (hub datasets only)."""
    split_default = DEFAULT_SPLIT.get(default_split, default_split)
    if spec.startswith(HUB_PREFIX):
        name, _, split = spec[len(HUB_PREFIX) :].partition(":")
        return _hub_split(name, subset, split or split_default)
    path = Path(spec).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES:
        return Table(_read_file(path), str(path))
    folder, _, split = spec.rpartition(":")
    if Path(folder).expanduser().suffix.lower() in TABLE_SUFFIXES:
        raise UserError(f"{folder}: a {Path(folder).suffix} file holds one split; drop {shown(':' + split)}")
    if not path.is_dir():  # `FOLDER:SPLIT`
        path = Path(folder).expanduser()
    else:
        split = ""
    return _folder_split(path, split, split_default)


def columns(table: Table, names: list[str]) -> dict[str, list]:
    """The values of the named columns; a missing column names the table and the columns it has, and a
    column that holds lists or objects (not text or a label) is refused."""
    from datasets import ClassLabel, Value

    features = table.dataset.features
    for name in names:
        if name not in features:
            raise UserError(
                f"{table.source}: no column {shown(name)} (columns: {cut(', '.join(map(str, features)))}); set it "
                "with data.text_column / data.text_pair_column / data.label_column"
            )
        if not isinstance(features[name], Value | ClassLabel):
            raise UserError(
                f"{table.source}: column {shown(name)} holds {type(features[name]).__name__} values, not text or labels"
            )
    return {name: list(table.dataset[name]) for name in names}


def class_names(table: Table, column: str) -> list[str] | None:
    """The class names of a ClassLabel column (their order is the dataset's label order), else None."""
    from datasets import ClassLabel

    feature = table.dataset.features[column]
    return list(feature.names) if isinstance(feature, ClassLabel) else None


# ---- reading ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_progress():
    """No "Generating train split" bars and no log lines from `datasets` while a table is read: lmforge says
    what it read in one line, and a bad table is one UserError."""
    import datasets

    was_disabled = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


def _read_errors():
    """The exceptions `datasets` and pyarrow raise for unreadable input (ArrowInvalid is a ValueError,
    a missing file or a hub dataset out of reach an OSError, DatasetNotFoundError both)."""
    from datasets.exceptions import DatasetsError

    return (ValueError, OSError, DatasetsError)


def _read_file(path: Path):
    """A .parquet file, or a .arrow file (Arrow IPC stream, as datasets writes it, or IPC file), as one
    Dataset, through datasets' packaged "parquet" / "arrow" builders."""
    import datasets

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    kind = path.suffix.lower()[1:]
    try:
        with _quiet_progress():
            return datasets.load_dataset(kind, data_files=str(path), split="train")
    except _read_errors() as e:
        raise UserError(f"{path}: not a readable {kind} file ({first_line(e)})") from None


def _folder_split(path: Path, split: str, split_default: str) -> Table:
    """One split of a `save_to_disk` folder: a Dataset folder is one split (no `:SPLIT`), a DatasetDict
    folder's split is the spec's or the default."""
    import datasets

    if not path.is_dir():
        raise UserError(f"{path}: folder not found")
    try:
        loaded = datasets.load_from_disk(str(path))
    except _read_errors() as e:
        raise UserError(f"{path}: not a folder written by Dataset.save_to_disk ({first_line(e)})") from None
    if isinstance(loaded, datasets.Dataset):
        if split:
            raise UserError(f"{path}: a Dataset folder holds one split; drop {shown(':' + split)}")
        return Table(loaded, str(path))
    return Table(_pick_split(loaded, split or split_default, str(path)), f"{path}:{split or split_default}")


def _pick_split(splits, split: str, where: str):
    if split not in splits:
        raise UserError(f"{where}: no split {shown(split)} (splits: {cut(', '.join(splits))})")
    return splits[split]


def _hub_split(name: str, subset: str, split: str) -> Table:
    """One split of hub dataset `name` (its `subset`), read through `datasets.load_dataset`: from the hub,
    or from the datasets cache when HF_HUB_OFFLINE=1."""
    import datasets

    if not HUB_ID.fullmatch(name) or ".." in name:
        raise UserError(f"hub:{name}: not a hub dataset id (expected hub:OWNER/NAME or hub:NAME, then :SPLIT)")
    if Path(name).exists():  # datasets.load_dataset would read the local folder of that name instead
        raise UserError(
            f"hub:{name}: a local {shown(name)} exists here, which datasets would read instead of the hub "
            f"dataset; run from another folder, or name the local data without hub:"
        )
    of_subset = f" (subset {subset})" if subset else ""
    try:
        with _quiet_progress():
            splits = datasets.load_dataset(name, subset or None)
    except (*_read_errors(), RuntimeError) as e:  # RuntimeError: a dataset made of a loading script
        raise UserError(_hub_failure(name, subset, e)) from None
    if datasets.config.HF_HUB_OFFLINE:
        say(f"hub:{name}{of_subset}: from the datasets cache ({datasets.config.HF_DATASETS_CACHE}), offline")
    return Table(_pick_split(splits, split, f"hub:{name}{of_subset}"), f"hub:{name}:{split}{of_subset}")


def _hub_failure(name: str, subset: str, error: Exception) -> str:
    """One line on why hub dataset `name` did not load: not cached offline, no such subset, a subset
    needed, or datasets' own message."""
    import datasets

    offline = datasets.config.HF_HUB_OFFLINE
    subsets = _subsets(name, offline)
    cache = datasets.config.HF_DATASETS_CACHE
    if offline and not subsets:
        return (
            f"hub:{name}: not in the datasets cache ({cache}), and HF_HUB_OFFLINE=1 rules out downloading it; "
            "load it once with network, or point HF_DATASETS_CACHE (or HF_HOME) at the cache that holds it"
        )
    if subset and subsets and subset not in subsets:
        return f"hub:{name}: no subset {shown(subset)} (subsets: {cut(', '.join(subsets))}); set data.subset"
    if not subset and len(subsets) > 1:
        return f"hub:{name} has several subsets ({cut(', '.join(subsets))}): choose one with data.subset"
    return f"hub:{name}: cannot load it: {first_line(error)}"


def _subsets(name: str, offline: bool) -> list[str]:
    """The subsets of hub dataset `name`: offline, those in the datasets cache (the layout datasets' cache
    builder reads: `<cache>/<namespace>___<name>/<subset>/...`); online, the hub's list."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    if offline:
        *namespace, last = name.split("/")
        root = Path(datasets.config.HF_DATASETS_CACHE) / "___".join([*namespace, camelcase_to_snakecase(last)])
        return sorted(p.name for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    try:
        return list(datasets.get_dataset_config_names(name))
    except _read_errors():
        return []
