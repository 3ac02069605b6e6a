"""V-STaR end to end on tiny-gpt2: the shipped recipes through the CLI at a tiny scale, every stage
written, an interrupted run resumed without sampling again, and bad options refused."""

import json
import math
import shutil

import pytest
import torch
from conftest import run_cli

from lmforge.cli.main import main

TINY = [
    "model.name=tiny-gpt2",
    "model.max_length=1024",
    "data.max_train_examples=6",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.grad_accum=1",
    "train.eval_batch_size=8",
    "vstar.iterations=2",
    "vstar.samples_per_problem=2",
    "vstar.max_new_tokens=24",
    "vstar.test_problems=3",
    "vstar.test_samples=4",
    "vstar.ks=[1,2,4]",
    "vstar.target_modules=[c_attn,c_proj,c_fc]",
    "vstar.verifier.batch_size=2",
    "vstar.verifier.grad_accum=1",
    "vstar.orm.enabled=true",
    "vstar.orm.batch_size=4",
    "vstar.orm.grad_accum=1",
]
TIMEOUT = 1800


@pytest.fixture(scope="module")
def gsm8k_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vstar") / "gsm8k"
    result = run_cli("run", "vstar/gemma_gsm8k", *TINY, "--run-dir", str(run_dir), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def final(run_dir):
    return json.loads((run_dir / "final.json").read_text())


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_every_stage_is_written_and_the_buffers_grow_as_algorithm_1_says(gsm8k_run):
    run_dir, result = gsm8k_run
    stages = run_dir / "stages"
    for t in (1, 2):
        assert (stages / f"generator-{t}" / "final.json").is_file()
        samples = lines(stages / f"samples-{t}.jsonl")
        assert len(samples) == 6 * 2 and {s["index"] for s in samples} == {0, 1}
        assert len(lines(stages / f"test-{t}.jsonl")) == 3 * 4
        scores = lines(stages / f"scores-{t}.jsonl")
        assert len(scores) == 12 and all(s["tokens"] >= 1 for s in scores)
    # D_GEN of round 2 = D_SFT (6 references) + the correct samples of round 1
    correct_1 = sum(s["passed"] for s in lines(stages / "samples-1.jsonl"))
    assert len(lines(stages / "generator-2.jsonl")) == 6 + correct_1
    summary = final(run_dir)
    all_samples = lines(stages / "samples-1.jsonl") + lines(stages / "samples-2.jsonl")
    assert summary["d_ver_solutions"] == 6 + len(all_samples)
    assert summary["d_ver_correct"] == 6 + sum(s["passed"] for s in all_samples)
    assert summary["preference_pairs"] >= 1 and (stages / "verifier" / "final.json").is_file()
    last = summary["generators"]["2"]
    assert set(last["best_of_k"]) == {"likelihood", "mean_likelihood", "implicit_reward", "orm"}
    assert (stages / "orm" / "final.json").is_file()
    assert set(last["pass@k"]) == set(last["majority_vote"]) == {"1", "2", "4"}
    report = (run_dir / "report.html").read_text()
    assert "<svg" in report and "Best-of-k" in report


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_the_verifier_scores_are_its_likelihoods(gsm8k_run):
    run_dir, _ = gsm8k_run
    for row in lines(run_dir / "stages" / "scores-2.jsonl"):
        assert row["likelihood"] < 0 and row["mean_likelihood"] == pytest.approx(row["likelihood"] / row["tokens"])
        assert 0 < row["orm"] < 1


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_each_generator_is_trained_from_the_base_model_not_from_the_previous_generator(gsm8k_run):
    """Algorithm 1: G^t <- SFT(G_base, D_GEN). A random tiny GPT-2 answers no GSM8K problem, so D_GEN is the
    same in both rounds and G^2, trained from the base with G^1's seed and data, must be G^1 exactly; a G^2
    trained on from G^1's weights would learn other LoRA updates (the gradients depend on the weights)."""
    run_dir, _ = gsm8k_run
    stages = run_dir / "stages"
    assert lines(stages / "generator-2.jsonl") == lines(stages / "generator-1.jsonl")  # no correct sample
    first, second = (adapter_tensors(stages / f"generator-{t}" / "final") for t in (1, 2))
    assert first.keys() == second.keys() and len(first) > 0
    assert any(name.endswith("lora_B.weight") and w.abs().max() > 0 for name, w in first.items())  # trained
    for name in first:
        assert torch.equal(first[name], second[name]), name
    base_name = json.loads((stages / "generator-2" / "final" / "adapter_config.json").read_text())
    assert base_name["base_model_name_or_path"] == "tiny-gpt2"


def sequence_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """log p(completion + EOS | prompt), one token at a time from the model's full logits."""
    from lmforge.data.pairs import encode_pair

    ids, prompt_length = encode_pair(tokenizer, prompt, completion, 1 << 30)[:2]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(prompt_length, len(ids)))


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_test_time_scores_are_the_verifiers_not_g_sft(gsm8k_run):
    """Every candidate's likelihood is log V(y|x) under stages/verifier (recomputed here token by token),
    and its implicit reward beta * (log V - log G_SFT): with the two models swapped or the score read
    from G_SFT, the scores would be G_SFT's log-probabilities, which differ from V's."""
    from lmforge.models.causal_lm import load_causal_lm
    from lmforge.tasks import load_task

    run_dir, _ = gsm8k_run
    stages = run_dir / "stages"
    verifier, tokenizer = load_causal_lm(str(stages / "verifier" / "final"))
    gsft, _ = load_causal_lm(str(stages / "generator-1" / "final"))
    task = load_task("gsm8k")
    prompts = {p.id: p.prompt for p in task.problems("dev", limit=3, shots=0)}
    candidates = {(c["problem_id"], c["index"]): c for c in lines(stages / "test-2.jsonl")}
    gaps = []
    for row in lines(stages / "scores-2.jsonl"):
        c = candidates[(row["problem_id"], row["index"])]
        completion = c["completion"] + task.answer_end
        log_v = sequence_logprob(verifier, tokenizer, prompts[c["problem_id"]], completion)
        log_g = sequence_logprob(gsft, tokenizer, prompts[c["problem_id"]], completion)
        assert row["likelihood"] == pytest.approx(log_v, abs=1e-4)
        assert row["implicit_reward"] == pytest.approx(0.1 * (log_v - log_g), abs=1e-5)
        gaps.append(abs(log_v - log_g))
    assert max(gaps) > 1e-2  # the verifier moved away from G_SFT: the check above tells them apart


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_an_interrupted_run_resumes_without_sampling_again(gsm8k_run, tmp_path):
    run_dir, _ = gsm8k_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    stages = copy / "stages"
    # stopped after round 1's samples: generator 2, its samples, the verifier and the tests are gone
    for name in ("generator-2", "verifier", "orm"):
        shutil.rmtree(stages / name)
    for path in stages.glob("*"):
        if path.is_file() and not path.name.startswith(("samples-1", "generator-1")):
            path.unlink()
    (copy / "final.json").unlink()
    kept = (stages / "samples-1.jsonl").stat().st_mtime_ns
    result = run_cli("run", "vstar/gemma_gsm8k", "--resume", "--run-dir", str(copy), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "samples-1.jsonl: sampled earlier" in result.stderr and "generator 1: finished earlier" in result.stderr
    assert (stages / "samples-1.jsonl").stat().st_mtime_ns == kept
    assert final(copy)["generators"] == final(run_dir)["generators"]  # seeded: the same samples and scores


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_an_interrupted_sampling_stage_resumes_after_its_last_finished_chunk(gsm8k_run, tmp_path):
    run_dir, _ = gsm8k_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    stages = copy / "stages"
    whole = lines(stages / "test-2.jsonl")
    for name in ("test-2.jsonl", "test-2.timing.json", "scores-2.jsonl", "../final.json"):
        (stages / name).unlink()
    # stopped after the first problem's chunk; a marker shows that chunk is kept, not sampled again
    first = [dict(row) for row in whole if row["problem_id"] == whole[0]["problem_id"]]
    first[0]["completion"] = "kept from the partial file"
    partial = {"generation_seconds": 1.5, "label_seconds": 0.0, "generated_tokens": 7, "samples": first}
    (stages / "test-2.jsonl.partial").write_text(json.dumps(partial))
    result = run_cli("run", "vstar/gemma_gsm8k", "--resume", "--run-dir", str(copy), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test-2.jsonl: 1 of 3 problems sampled earlier" in result.stderr
    resumed = lines(stages / "test-2.jsonl")
    assert resumed[0]["completion"] == "kept from the partial file"
    assert resumed[1:] == whole[1:]  # the rest, sampled after the resume, is what the whole stage sampled
    assert not (stages / "test-2.jsonl.partial").exists()
    timing = json.loads((stages / "test-2.timing.json").read_text())
    assert timing["generated_tokens"] == 7 + sum(row["tokens"] for row in whole[len(first) :])


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_the_openai_backend_samples_through_a_real_server_what_hf_samples_here(gsm8k_run, tmp_path):
    from lmforge.generation.generate import make_generator
    from lmforge.generation.serve import CompletionServer, start_in_thread

    hf_run, _ = gsm8k_run
    server = CompletionServer(("127.0.0.1", 0), make_generator("hf", "tiny-gpt2"), "tiny-gpt2", quiet=True)
    start_in_thread(server)
    try:
        run_dir = tmp_path / "served"
        args = [*TINY, "vstar.iterations=1", "vstar.orm.enabled=false", "vstar.backend=openai"]
        assert main(["run", "vstar/gemma_gsm8k", *args, f"vstar.base_url={server.url}", "--run-dir", str(run_dir)]) == 0
        assert set(server.loaded) == {"served/generator-1"}  # the generator was loaded by the server, by name
    finally:
        server.shutdown()
        server.server_close()
    for name in ("samples-1.jsonl", "test-1.jsonl"):  # seeded per sample: the same texts and verdicts
        assert lines(run_dir / "stages" / name) == lines(hf_run / "stages" / name)


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_mbpp_runs_programs_in_the_sandbox_and_has_no_majority_vote(tmp_path):
    run_dir = tmp_path / "mbpp"
    one_round = [*TINY, "vstar.iterations=1", "data.max_train_examples=4"]
    result = run_cli("run", "vstar/gemma_mbpp", *one_round, "--run-dir", str(run_dir), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = lines(run_dir / "stages" / "samples-1.jsonl")
    assert len(samples) == 8 and all(s["exec_seconds"] is not None for s in samples)  # each program was run
    pairs = lines(run_dir / "stages" / "generator-1.jsonl")
    assert len(pairs) == 4 and all(p["completion"].endswith("\n[DONE]") for p in pairs)
    last = final(run_dir)["generators"]["1"]
    assert "majority_vote" not in last and set(last["best_of_k"]["likelihood"]) == {"1", "2", "4"}


@pytest.mark.slow  # runs the CLI in a fresh process, or needs a run made that way
def test_rft_shape_samples_once_then_trains_the_last_generator_without_sampling_it(gsm8k_run, tmp_path):
    hf_run, _ = gsm8k_run
    run_dir = tmp_path / "rft"
    args = [*TINY, "vstar.orm.enabled=false", "vstar.sample_last_generator=false"]
    assert main(["run", "vstar/gemma_gsm8k", *args, "--run-dir", str(run_dir)]) == 0
    stages = run_dir / "stages"
    assert (stages / "generator-2" / "final.json").is_file() and not (stages / "samples-2.jsonl").exists()
    assert lines(stages / "samples-1.jsonl") == lines(hf_run / "stages" / "samples-1.jsonl")
    assert final(run_dir)["d_ver_solutions"] == 6 + 12 and set(final(run_dir)["generators"]) == {"1", "2"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.train=sst2:train"], "vstar needs a task with labels it can check"),
        (["data.train=gsm8k:dev"], "train on gsm8k:train"),
        (["data.eval=gsm8k:dev"], "data.eval: not used by vstar"),
        (["data.text_pair_column=question"], "data.text_pair_column / data.subset: not available for vstar"),
        (["vstar.ks=[1,16]"], r"each k must be between 1 and vstar.test_samples \(4\)"),
        (["vstar.test_split=train"], "vstar.test_split: 'train'"),
    ],
)
def test_bad_options_are_one_clear_line_and_nothing_written(tmp_path, capsys, overrides, message):
    import re

    run_dir = tmp_path / "run"
    assert main(["run", "vstar/gemma_gsm8k", *TINY, *overrides, "--run-dir", str(run_dir)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, last), last
    assert not run_dir.exists()


def training_records(run_folder):
    """A training stage's metrics.jsonl without the fields that measure time."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in lines(run_folder / "metrics.jsonl")]


def stop_before(run_folder, kept: tuple[str, ...]) -> None:
    """Make RUN_FOLDER what an interrupted run leaves: only the stages whose names start with KEPT, no final.json."""
    for path in (run_folder / "stages").iterdir():
        if not path.name.startswith(kept):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (run_folder / "final.json").unlink()


@pytest.mark.slow  # a V-STaR run and two resumed copies of it, in this process
def test_a_run_stopped_before_the_verifiers_trains_the_verifiers_of_the_uninterrupted_run(tmp_path):
    """The verifier and the ORM seed their stage right before their adapters are made, so they do not depend
    on what ran before them in the process: the uninterrupted run trained G^1 before them; a copy stopped
    once G^1 and its samples were done trains no generator before its verifier, and a copy stopped after the
    verifier trains nothing before its ORM; both follow other runs in this process. The base model is a
    folder, which loading does not reseed (the builtin tiny-gpt2 would be rebuilt from its seed, which hides
    the difference). And model.dropout=0 reaches the verifier: its first DPO step, at V = G_SFT (LoRA's B is
    zero), has the loss -log sigmoid(0) = log 2, which GPT-2's own dropout (0.1) would move."""
    from lmforge.models.causal_lm import load_causal_lm

    model, tokenizer = load_causal_lm("tiny-gpt2")
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    # 2 problems, one held out by the verifiers: 2 DPO steps (its reference x its 2 samples), 3 ORM steps
    args = ["vstar/gemma_gsm8k", *TINY, f"model.name={tmp_path / 'gpt2'}", "model.dropout=0", "model.max_length=512",
            "train.log_every=1", "train.max_steps=1", "data.max_train_examples=2", "vstar.iterations=1",
            "vstar.max_new_tokens=8", "vstar.test_problems=1", "vstar.test_samples=1", "vstar.ks=[1]",
            "vstar.verifier.batch_size=1", "vstar.orm.batch_size=1"]  # fmt: skip
    whole = tmp_path / "whole"
    assert main(["run", *args, "--run-dir", str(whole)]) == 0
    stops = [  # (copy, the stages it keeps, the stages it trains again)
        ("before_verifier", ("generator-1", "samples-1"), ("verifier", "orm")),
        ("before_orm", ("generator-1", "samples-1", "verifier"), ("orm",)),
    ]
    for copy, kept, trained in stops:
        shutil.copytree(whole, tmp_path / copy)
        stop_before(tmp_path / copy, kept)
        assert main(["run", "vstar/gemma_gsm8k", "--resume", "--run-dir", str(tmp_path / copy)]) == 0
        for name in trained:
            first, second = whole / "stages" / name, tmp_path / copy / "stages" / name
            assert training_records(second) == training_records(first), (copy, name)
            first, second = adapter_tensors(first / "final"), adapter_tensors(second / "final")
            assert first.keys() == second.keys() and len(first) > 0
            for key in first:
                assert torch.equal(first[key], second[key]), (copy, name, key)
        assert final(tmp_path / copy)["generators"] == final(whole)["generators"]
    for name, steps in (("verifier", 2), ("orm", 3)):  # every step of both was compared
        assert [r["step"] for r in training_records(whole / "stages" / name) if r["split"] == "train"] == [
            *range(1, steps + 1)
        ]
    first_step = lines(whole / "stages" / "verifier" / "metrics.jsonl")[0]
    assert first_step["split"] == "train" and first_step["loss"] == pytest.approx(math.log(2), abs=1e-5)
