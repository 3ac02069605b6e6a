"""The harness's openbookqa and gsm8k tasks, their data read from lmforge's bundled files."""

import json
from pathlib import Path

import lm_eval

import lmforge
from lmforge.tasks.gsm8k import PATH as GSM8K
from lmforge.tasks.gsm8k import carve

out = Path("lmforge-tasks").resolve()
out.mkdir(exist_ok=True)
bundled = Path(lmforge.__file__).parent / "datasets"

# OpenBookQA's 500 test questions, in the layout of the harness's task (question_stem, choices, answerKey)
with open(out / "openbookqa_test.jsonl", "w") as f:
    for line in open(bundled / "openbookqa" / "test_complete.jsonl"):
        row = json.loads(line)
        choices = row["question"]["choices"]
        f.write(
            json.dumps(
                {
                    "question_stem": row["question"]["stem"],
                    "answerKey": row["answerKey"],
                    "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                }
            )
            + "\n"
        )

# GSM8K: lmforge's dev split (500 problems of the bundled training file) as the test split, its 8
# exemplar problems as the few-shot split
rows = [json.loads(line) for line in open(GSM8K)]
exemplars, dev, _ = carve(len(rows))
for split, index in (("train", exemplars), ("test", dev)):
    with open(out / f"gsm8k_{split}.jsonl", "w") as f:
        f.writelines(json.dumps(rows[i]) + "\n" for i in index)

# The harness's own task files, renamed, reading those files instead of the hub
tasks = Path(lm_eval.__file__).parent / "tasks"
for task, files in (
    ("openbookqa/openbookqa.yaml", {"test": "openbookqa_test.jsonl"}),
    ("gsm8k/gsm8k.yaml", {"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}),
):
    name = Path(task).stem
    data = "".join(f"    {split}: {out / file}\n" for split, file in files.items())
    dropped = ("dataset_path", "dataset_name", "training_split", "validation_split", "tag:", "  - math_word")
    kept = [line for line in (tasks / task).read_text().splitlines() if not line.startswith(dropped)]
    text = "\n".join(kept).replace(f"task: {name}", f"task: lmforge_{name}")
    (out / f"lmforge_{name}.yaml").write_text(f"dataset_path: json\ndataset_kwargs:\n  data_files:\n{data}{text}\n")
