"""lm-evaluation-harness (the `lm-eval` package) against `lmforge serve`: `lm_eval --model local-completions`
runs one loglikelihood task (multiple choice) and one generation task, built here from local jsonl files
(the harness's own tasks download their data), on tiny-gpt2. The harness finds the server's tokenizer
endpoints (/tokenize, /tokenizer_info) and uses them; its loglikelihoods must be the ones transformers
gives for the same tokens, and its generations the `hf` backend's."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_server import tiny_generator  # noqa: F401 (fixture)

from lmforge.generation.sampling import SamplingParams
from lmforge.generation.serve import CompletionServer, start_in_thread

CHOICES = [
    {"question": "the movie was", "choices": ["great", "a film", "terrible and long"], "label": 0},
    {"question": "what is the capital of france ?", "choices": ["paris", "a city"], "label": 0},
    {"question": "a gripping", "choices": ["story", "plot of the movie"], "label": 1},
]
QUESTIONS = [{"question": "what is 2 + 3 ?", "answer": "5"}, {"question": "name a color", "answer": "red"}]

MC_TASK = """\
task: lmforge_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
GEN_TASK = """\
task: lmforge_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


def write_tasks(folder):
    folder.mkdir()
    for name, rows, task in (("mc", CHOICES, MC_TASK), ("gen", QUESTIONS, GEN_TASK)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        (folder / f"lmforge_tiny_{name}.yaml").write_text(task.format(data=data))


def loglikelihood(generator, context: str, continuation: str) -> float:
    """log p(continuation | context) with transformers, the tokens split as the harness splits them."""
    tokenizer = generator.tokenizer
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        scores = torch.log_softmax(generator.model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(scores[t - 1, whole[t]].item() for t in range(start, len(whole)))


@pytest.mark.slow  # lm_eval in a fresh process (its imports alone take seconds)
def test_lm_eval_local_completions_scores_and_generates_through_the_server(tiny_generator, tmp_path):
    write_tasks(tmp_path / "tasks")
    server = CompletionServer(("127.0.0.1", 0), tiny_generator, "tiny-gpt2", quiet=True)
    start_in_thread(server)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "cache")  # the tasks' data prepared there, not in the user's cache
    command = [
        *(sys.executable, "-m", "lm_eval", "--model", "local-completions"),
        *("--model_args", f"model=tiny-gpt2,base_url={server.url}/completions"),
        *("--tasks", "lmforge_tiny_mc,lmforge_tiny_gen", "--include_path", str(tmp_path / "tasks")),
        *("--output_path", str(tmp_path / "out"), "--log_samples"),
    ]
    try:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Using tokenizer remote" in run.stderr  # the server's tokenizer endpoints were found and used

    [mc] = glob.glob(str(tmp_path / "out" / "tiny-gpt2" / "samples_lmforge_tiny_mc_*.jsonl"))
    correct = []
    for line, doc in zip(open(mc), CHOICES, strict=True):
        sample = json.loads(line)
        scores = [float(score) for score, _ in sample["filtered_resps"]]
        expected = [loglikelihood(tiny_generator, doc["question"], " " + choice) for choice in doc["choices"]]
        assert scores == pytest.approx(expected, abs=1e-4)
        correct.append(max(range(len(expected)), key=expected.__getitem__) == doc["label"])
    [results] = glob.glob(str(tmp_path / "out" / "tiny-gpt2" / "results_*.json"))
    accuracy = json.load(open(results))["results"]["lmforge_tiny_mc"]["acc,none"]
    assert accuracy == pytest.approx(sum(correct) / len(correct))

    [gen] = glob.glob(str(tmp_path / "out" / "tiny-gpt2" / "samples_lmforge_tiny_gen_*.jsonl"))
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop=("\n",))
    for line, doc in zip(open(gen), QUESTIONS, strict=True):
        [[expected]] = tiny_generator.generate([f"Q: {doc['question']}\nA:"], params)
        assert json.loads(line)["filtered_resps"] == [expected.text]
