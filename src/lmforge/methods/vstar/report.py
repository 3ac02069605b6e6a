"""report.html of a V-STaR run: Pass@1 of each generator, Best-of-k against k for each verifier score
and majority vote (the paper's Figure 4 style), and the sizes of D_GEN, D_VER and the pairs."""

from __future__ import annotations

from html import escape
from pathlib import Path

from lmforge.core.report import html_page
from lmforge.core.rundir import write_text_atomic
from lmforge.methods.vstar.select import best_of_k_chart_svg


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def write_vstar_report(run_dir: Path, final: dict) -> Path:
    generators = final["generators"]
    last = generators[str(final["iterations"])]
    ks = list(last["pass@k"])
    parts = [
        f"<h1>V-STaR: {escape(final['task'])}</h1>",
        f"<p>{final['iterations']} iterations, k = {final['samples_per_problem']} samples for each of "
        f"{final['query_problems']:,} training problems; {final['test_problems']:,} test problems, "
        f"N = {final['test_samples']} candidates each. D_GEN {final['d_gen_pairs']:,} pairs; D_VER "
        f"{final['d_ver_solutions']:,} solutions ({final['d_ver_correct']:,} correct); "
        f"{final['preference_pairs']:,} preference pairs.</p>",
        "<h2>Generators: Pass@1 (and pass@k) on the test problems</h2>",
        _table(
            ["generator", *[f"pass@{k}" for k in ks]],
            [[f"G^{t}", *[_pct(r["pass@k"][k]) for k in ks]] for t, r in generators.items()],
        ),
        "<h2>Best-of-k of the final generator's candidates</h2>",
    ]
    curves = {f"verifier: {name}": {int(k): x for k, x in c.items()} for name, c in last["best_of_k"].items()}
    if "majority_vote" in last:
        curves["majority vote"] = {int(k): x for k, x in last["majority_vote"].items()}
    curves["pass@k (oracle)"] = {int(k): x for k, x in last["pass@k"].items()}
    parts.append(best_of_k_chart_svg(curves, f"Best-of-k, generator G^{final['iterations']}"))
    rows = [[name, *[_pct(c[int(k)]) for k in ks]] for name, c in curves.items()]
    parts.append(_table(["selection", *[f"k={k}" for k in ks]], rows))
    parts.append(f"<p>Test-time score of the recipe: {escape(final['test_score'])}.</p>")
    out = Path(run_dir) / "report.html"
    write_text_atomic(out, html_page("V-STaR", "\n".join(parts)))
    return out
