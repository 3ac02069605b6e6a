"""Data read through `datasets` (data/hub.py, files.read_table): .parquet and .arrow files, save_to_disk
folders and hub datasets from the datasets cache offline, text pairs, and their one-line errors. Real files
written with `datasets` and pyarrow in tmp_path; the datasets cache moved to tmp_path (never the user's)."""

import json
import shutil

import datasets
import pyarrow as pa
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from lmforge.data.files import label_set, load_examples, load_task
from lmforge.errors import UserError

# MRPC's label names: their order (the dataset's) differs from the sorted one, so the test can tell them apart
LABELS = ClassLabel(names=["not_equivalent", "equivalent"])
FEATURES = Features({"sentence1": Value("string"), "sentence2": Value("string"), "label": LABELS})


def pairs(n: int, offset: int = 0) -> Dataset:
    rows = range(offset, offset + n)
    return Dataset.from_dict(
        {
            "sentence1": [f"the film number {i} was long" for i in rows],
            "sentence2": [f"it lasted {i} hours" for i in rows],
            "label": [i % 2 for i in rows],
        },
        features=FEATURES,
    )


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets reads and writes its cache here for the test (HF_DATASETS_CACHE, read at each call)."""
    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def cache_like_a_hub_download(cache, repo_id: str, subsets: dict[str, DatasetDict], build) -> None:
    """Leave `repo_id` in the datasets cache as `load_dataset(repo_id, subset)` does after a download: the
    hub builds a parquet dataset named after the repo (repo_id and dataset_name are what the hub's module
    factory passes the builder, datasets/load.py) and writes it under <namespace>___<name>/<subset>/<version>/
    <commit>/, the folders the offline cache fallback searches (datasets/packaged_modules/cache/cache.py)."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo_id.split("/")
    for subset, splits in subsets.items():
        source = build / subset
        for split, table in splits.items():
            table.to_parquet(str(source / f"{split}.parquet"))
        files = DataFilesDict.from_patterns({s: [f"{s}.parquet"] for s in splits}, base_path=str(source))
        builder = Parquet(
            cache_dir=str(build / "built"), config_name=subset, data_files=files, dataset_name=name, hash="0123abcd"
        )
        builder.download_and_prepare()
        shutil.copytree(builder.cache_dir, cache / f"{namespace}___{name}" / subset / "0.0.0" / "0123abcd")


def test_parquet_text_pairs_keep_both_texts_class_names_and_skipped_rows(tmp_path):
    table = pairs(4).to_dict()
    table["sentence2"][1] = "  "  # an empty second text: skipped and counted
    table["label"][2] = -1  # ClassLabel's "no label" (GLUE's test splits): skipped and counted
    Dataset.from_dict(table, features=FEATURES).to_parquet(str(tmp_path / "train.parquet"))

    train = load_examples(str(tmp_path / "train.parquet"), "sentence1", "label", text_pair_column="sentence2")
    assert train.texts == ["the film number 0 was long", "the film number 3 was long"]
    assert train.text_pairs == ["it lasted 0 hours", "it lasted 3 hours"]
    assert train.labels == ["not_equivalent", "equivalent"]  # class names, not 0 and 1
    assert train.skipped == {"empty text pair": 1, "empty label": 1}
    assert train.where(1) == "row 4"
    assert label_set(train, str(tmp_path / "train.parquet")) == ["not_equivalent", "equivalent"]  # not sorted
    assert load_examples(str(tmp_path / "train.parquet"), "sentence1", "label").text_pairs is None


def test_arrow_files_in_both_ipc_formats_and_plain_integer_labels(tmp_path):
    plain = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [1, 0, 1]})
    plain.save_to_disk(str(tmp_path / "saved"))  # an Arrow stream file, as datasets writes its own
    stream = tmp_path / "stream.arrow"
    shutil.copy(next((tmp_path / "saved").glob("*.arrow")), stream)
    with pa.ipc.new_file(str(tmp_path / "file.arrow"), plain.data.table.schema) as writer:  # the IPC file format
        writer.write_table(plain.data.table)

    for path in (stream, tmp_path / "file.arrow"):
        examples = load_examples(str(path))
        assert (examples.texts, examples.labels, examples.label_order) == (
            ["good", "bad", "fine"],
            ["1", "0", "1"],
            None,
        )
    (tmp_path / "broken.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(UserError, match=r"broken.arrow: not a readable arrow file \("):
        load_examples(str(tmp_path / "broken.arrow"))


def test_save_to_disk_folders_name_their_split_after_the_colon(tmp_path):
    folder = tmp_path / "glue_dd"
    DatasetDict({"train": pairs(6), "validation": pairs(2, offset=6)}).save_to_disk(str(folder))
    task = load_task(f"{folder}:train", str(folder), "sentence1", "label", text_pair_column="sentence2")
    assert (len(task.train), task.eval.source) == (6, f"{folder}:validation")  # data.eval's default: validation
    assert task.eval.text_pairs == ["it lasted 6 hours", "it lasted 7 hours"]

    with pytest.raises(UserError, match=r"glue_dd: no split 'test' \(splits: train, validation\)"):
        load_examples(f"{folder}:test", "sentence1")
    pairs(2).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(UserError, match=r"one: a Dataset folder holds one split; drop ':train'"):
        load_examples(f"{tmp_path / 'one'}:train", "sentence1")
    with pytest.raises(UserError, match=r"\.parquet file holds one split; drop ':train'"):
        load_examples(f"{tmp_path / 'x.parquet'}:train")


def test_a_missing_column_names_the_table_and_the_columns_it_has(tmp_path):
    pairs(3).to_parquet(str(tmp_path / "dev.parquet"))
    with pytest.raises(UserError) as e:
        load_examples(str(tmp_path / "dev.parquet"), "sentence1", "label", text_pair_column="hypothesis")
    assert str(e.value).startswith(f"{tmp_path / 'dev.parquet'}: no column 'hypothesis' (columns: sentence1, ")
    assert "label)" in str(e.value) and "data.text_pair_column" in str(e.value)


def test_a_hub_dataset_loads_offline_from_the_datasets_cache(tmp_path, datasets_cache):
    assert datasets.config.HF_HUB_OFFLINE  # tests/conftest.py: no network
    splits = DatasetDict({"train": pairs(6), "validation": pairs(4, offset=6)})
    cache_like_a_hub_download(datasets_cache, "lmforge-test/glue-mini", {"mrpc": splits}, tmp_path / "build")

    task = load_task(
        "hub:lmforge-test/glue-mini", "hub:lmforge-test/glue-mini", "sentence1", "label", 0, 3, "sentence2", "mrpc"
    )
    assert task.train.source == "hub:lmforge-test/glue-mini:train (subset mrpc)"
    assert task.eval.source == "hub:lmforge-test/glue-mini:validation (subset mrpc)"
    assert task.eval.texts[0] == "the film number 6 was long" and task.eval.text_pairs[0] == "it lasted 6 hours"
    assert (len(task.train), len(task.eval), task.labels) == (6, 3, ["not_equivalent", "equivalent"])
    assert len(task.eval.text_pairs) == 3  # data.max_eval_examples cuts the second texts too
    one_subset = load_examples("hub:lmforge-test/glue-mini:validation", "sentence1")  # its only subset
    assert len(one_subset) == 4


def test_hub_errors_name_the_subsets_and_splits_that_exist(tmp_path, datasets_cache):
    splits = DatasetDict({"train": pairs(2), "validation": pairs(2)})
    cache_like_a_hub_download(datasets_cache, "lmforge-test/glue-mini", {"mrpc": splits, "rte": splits}, tmp_path)
    cases = [
        ("hub:lmforge-test/glue-mini", "qqp", r"glue-mini: no subset 'qqp' \(subsets: mrpc, rte\); set data.subset"),
        ("hub:lmforge-test/glue-mini", "", r"glue-mini has several subsets \(mrpc, rte\): choose one with data.subset"),
        ("hub:lmforge-test/glue-mini:test", "rte", r"\(subset rte\): no split 'test' \(splits: train, validation\)"),
        ("hub:lmforge-test/not-cached", "", r"not-cached: not in the datasets cache \(.*hf-datasets\)"),
        ("hub:../secrets", "", r"not a hub dataset id"),
    ]
    for spec, subset, message in cases:
        with pytest.raises(UserError, match=message):
            load_examples(spec, "sentence1", subset=subset)


def test_pairs_and_subsets_where_they_cannot_apply_are_refused(tmp_path):
    with pytest.raises(UserError, match="builtin dataset 'sst2' has single texts, no column 'sentence2'"):
        load_task("sst2:train", "sst2:dev", "text", "label", text_pair_column="sentence2")
    with pytest.raises(UserError, match="data.subset: 'mrpc' names a subset of a hub dataset, but neither"):
        load_task("sst2:train", "sst2:dev", "text", "label", subset="mrpc")
    (tmp_path / "pairs.csv").write_text("a,b,label\nfirst,second,x\nthird,,y\n")
    examples = load_examples(str(tmp_path / "pairs.csv"), "a", text_pair_column="b")
    assert (examples.text_pairs, examples.skipped) == (["second"], {"empty text pair": 1})


@pytest.mark.slow
def test_a_pair_task_trains_end_to_end_from_parquet_and_the_hub_cache(
    tmp_path, datasets_cache, monkeypatch, cli, capsys
):
    """`lmforge run` on text pairs: training pairs from a .parquet file, evaluation pairs from a hub dataset in
    the datasets cache (HF_DATASETS_CACHE in the command's environment, HF_HUB_OFFLINE=1); the first training
    pair, as the model reads it, is the two texts with [SEP] between them. Then `lmforge eval` reads pairs."""
    from lmforge.cli.main import main

    pairs(16).to_parquet(str(tmp_path / "train.parquet"))
    splits = DatasetDict({"train": pairs(4), "validation": pairs(8, offset=16)})
    cache_like_a_hub_download(datasets_cache, "lmforge-test/glue-mini", {"mrpc": splits}, tmp_path / "build")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
    run = tmp_path / "run"
    done = cli(
        "run",
        "finetune/minilm_sst2",
        "model.name=tiny-bert",
        f"data.train={tmp_path / 'train.parquet'}",
        "data.eval=hub:lmforge-test/glue-mini:validation",
        "data.subset=mrpc",
        "data.text_column=sentence1",
        "data.text_pair_column=sentence2",
        "model.max_length=32",
        "train.max_steps=2",
        "train.batch_size=8",
        "--run-dir",
        str(run),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first = (
        "text pairs, the first as the model reads it: [CLS] the film number 0 was long [SEP] it lasted 0 hours [SEP]"
    )
    assert first in done.stderr and "train.parquet: 16 text pairs" in done.stderr
    final = json.loads((run / "final.json").read_text())
    assert final["labels"] == ["not_equivalent", "equivalent"]
    assert (final["eval_data"], final["n_examples"]) == ("hub:lmforge-test/glue-mini:validation (subset mrpc)", 8)

    # lmforge eval takes the run's pair column; predict, which reads single texts, refuses the run
    assert main(["eval", str(run), "--data", str(tmp_path / "train.parquet"), "--text-column", "sentence1"]) == 0
    assert json.loads((run / "eval" / "train.json").read_text())["n_examples"] == 16
    assert main(["predict", str(run), "a text"]) == 2
    assert "trained on text pairs (data.text_pair_column=sentence2)" in capsys.readouterr().err
