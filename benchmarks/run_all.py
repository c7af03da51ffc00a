"""`make bench`: every benchmark side by side in one run, then one table of ratios.

Runs each suite on this machine, one after the other (never two at once: they would measure
each other), each writing its own results JSON, then gathers the ratios:

  P1  loader ÷ raw read of the same bytes                       bench_data.py       goal ≥ 0.8
  P2  platform (Ray + ZeRO-3, 2 workers) ÷ bare torch loop      bench_train.py      goal ≥ 0.9
  P3  generation ÷ backbone alone, per attention mode           bench_inference.py  goal ≤ 1.2 (cached)
      and the same at the paper's scale from the planner's FLOP model (vap.plan.inference_ratios)
  P4  precomputed latents ÷ on-the-fly encoding                 bench_data.py       goal ≥ 10
  P5  checkpoint bytes ÷ trainable-state bytes                  bench_train.py      goal ≈ 1.0
  D1  decoding peak memory ÷ output size                        bench_decode.py

Writes benchmarks/results/summary.json, summary.md and summary.png, and the table into the
README between its `bench` markers. `--quick` runs smaller sizes (minutes, not tens of them);
`--only train …` runs some suites and takes the others' ratios from their JSON on disk;
`--collect` runs nothing and rebuilds the table from the JSON alone. Each suite run is recorded
in results/runs.json (date, arguments, load), so a table gathered from runs of different days
says which ratio comes from which run.
No ratio here is asserted by a test: timings on a shared 2-core machine are evidence, not a spec.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
RUNS = RESULTS / "runs.json"  # suite → when and how its results JSON was last measured
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")

# suite → (script, full arguments, quick arguments, the ratios it provides)
SUITES = {
    "data": ("bench_data.py", [], ["--samples", "32", "--p1-rounds", "3", "--steps", "4", "--rounds", "2"], ("P1", "P4")),
    "train": ("bench_train.py", [], ["--quick"], ("P2", "P5")),
    "inference": ("bench_inference.py", [], ["--steps", "10", "--repeats", "1"], ("P3",)),
    "decode": ("bench_decode.py", [], ["--quick"], ("D1",)),
}


TIMED = ("P1", "P2", "P3", "P4")  # ratios of times (P5, D1 are of bytes; P3 at the paper's scale of FLOPs)


@dataclass
class Row:
    id: str
    what: str
    ratio: float | None
    goal: str
    met: bool | None
    source: str


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _get(d: dict | None, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def paper_scale_p3() -> dict:
    """P3 at 49 frames, 480p from the planner's FLOP model: what a GPU run will see."""
    from vap.plan import Setup, inference_ratios

    out = {}
    for name, setup in (("cogvideox-5b-i2v", Setup()),
                        ("wan2.1-i2v-14b-480p", Setup(backbone="wan2.1-i2v-14b-480p", width=832))):
        out[name] = {k: round(v, 3) for k, v in inference_ratios(setup).items()}
    (RESULTS / "inference_paper_scale.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def rows() -> list[Row]:
    data, train, inf, dec = _load("data"), _load("train"), _load("inference"), _load("decode")
    paper = _load("inference_paper_scale")
    out = [
        Row("P1", "loader ÷ raw read, cached epochs", _get(data, "P1", "ratio_cached_epoch"), "≥ 0.8", None, "data.json"),
        Row("P2", "platform ÷ bare torch, samples/s", _get(train, "P2", "ratio"), "≥ 0.9", None, "train.json"),
    ]
    for fam in ("cogvideox", "wan"):
        for mode in ("joint", "one_way", "one_way_cache"):
            r = _get(inf, "families", fam, "denoising_step", "ratio_to_backbone", mode)
            out.append(Row("P3", f"{fam} step ÷ backbone, {mode} (small CPU model)", r,
                           "≤ 1.2" if mode == "one_way_cache" else "—", None, "inference.json"))
    for name in ("cogvideox-5b-i2v", "wan2.1-i2v-14b-480p"):
        for mode in ("joint", "one_way", "one_way_cache"):
            out.append(Row("P3", f"{name} step ÷ backbone, {mode} (49 frames 480p, FLOPs)",
                           _get(paper, name, mode), "≤ 1.2" if mode == "one_way_cache" else "—", None,
                           "inference_paper_scale.json"))
    out += [
        Row("P4", "precomputed ÷ on-the-fly encoding, steps/s", _get(data, "P4", "ratio"), "≥ 10", None, "data.json"),
        Row("P5", "checkpoint bytes ÷ trainable state", _get(train, "P5", "ratio"), "≈ 1.0", None, "train.json"),
        # the part that grows with the expert: what P5 tends to once the fixed ≈37 KB a rank is negligible
        Row("P5", "optimizer partitions ÷ trainable state (the part that scales)",
            _get(train, "P5", "ratio_optimizer_partitions"), "≈ 1.0", None, "train.json"),
        Row("D1", "decode peak memory ÷ output bytes", _get(dec, "ratio"), "bounded", None, "decode.json"),
    ]
    for r in out:
        if r.ratio is None:
            continue
        if r.goal.startswith("≥"):
            r.met = r.ratio >= float(r.goal[1:])
        elif r.goal.startswith("≤"):
            r.met = r.ratio <= float(r.goal[1:])
        elif r.goal.startswith("≈"):
            r.met = abs(r.ratio - float(r.goal[1:])) <= 0.1
    return out


def record_run(name: str, args: list[str], seconds: float, ok: bool) -> None:
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    runs[name] = {"script": SUITES[name][0], "args": args, "ok": ok, "seconds": round(seconds), **machine(),
                  "time": time.strftime("%H:%M UTC", time.gmtime())}
    RUNS.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")


def overloaded(run: dict | None) -> bool:
    return bool(run) and (run["load_avg_1m"] or 0) > run["cpus"]


def unreliable(r: Row) -> bool:
    """A ratio of times from a run on a machine busier than its cores."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    suite = next(name for name, (*_, gives) in SUITES.items() if r.id in gives)
    return r.id in TIMED and "FLOPs" not in r.what and overloaded(runs.get(suite))


def provenance(rs: list[Row]) -> list[str]:
    """One line per suite of the table: which ratios, measured when, how and under what load."""
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    lines = []
    for name, (script, *_, gives) in SUITES.items():
        if not any(r.id in gives and r.ratio is not None for r in rs):
            continue
        run = runs.get(name)
        how = (f"{run['date']} {run['time']}, `{' '.join([script, *run['args']])}`, load {run['load_avg_1m']}"
               # more runnable work than cores: a suite's several processes get a larger share of
               # the machine than its one-process baseline, so its time ratios lean their way
               + (f" (busier than its {run['cpus']} cores: time ratios unreliable, marked ?)"
                  if overloaded(run) else "")
               + ("" if run["ok"] else ", FAILED: ratios from an earlier run") if run else "run not recorded")
        lines.append(f"- {', '.join(gives)}: {how}")
    return lines


def machine() -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "load_avg_1m": round(load, 2) if load is not None else None,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def table(rs: list[Row], m: dict) -> str:
    lines = [f"Each ratio is measured side by side within its suite, on {m['cpus']} CPUs ({m['machine']}, "
             f"Python {m['python']}); the suites' last runs (`make bench`, results/runs.json; load is the "
             "1-minute load average from other work at the end of the run):", "", *provenance(rs), "",
             "| | what | ratio | goal | |", "|---|---|---|---|---|"]
    for r in rs:
        ratio = "not run" if r.ratio is None else f"{r.ratio:.3g}"
        mark = {True: "✓", False: "✗", None: ""}[r.met]
        if mark and unreliable(r):
            mark = "?"
        lines.append(f"| {r.id} | {r.what} | {ratio} | {r.goal} | {mark} |")
    return "\n".join(lines)


def plot(rs: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rs if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(shown) + 1.2))
    colors = ["#8d99ae" if r.met is None or unreliable(r) else "#2a9d8f" if r.met else "#e76f51" for r in shown]
    ax.barh(range(len(shown)), [r.ratio for r in shown], color=colors)
    for i, r in enumerate(shown):
        if r.goal[0] in "≥≤≈":
            ax.plot([float(r.goal[1:])] * 2, [i - 0.4, i + 0.4], color="black", lw=1.5)
        ax.text(r.ratio, i, f" {r.ratio:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(shown)), [f"{r.id} {r.what}" for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (log scale); black tick = goal; green met, red missed, grey no goal or timed under overload")
    ax.set_title("vap-platform benchmarks (make bench)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(text: str) -> None:
    readme = README.read_text()
    start, end = MARKERS
    if start in readme and end in readme:
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        README.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: minutes instead of tens of minutes")
    parser.add_argument("--only", nargs="+", choices=list(SUITES), help="run only these suites")
    parser.add_argument("--collect", action="store_true", help="run nothing; rebuild the table from results/*.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if not args.collect:
        for name in args.only or SUITES:
            script, full, quick, gives = SUITES[name]
            if not (HERE / script).exists():
                print(f"[bench] {name}: {script} not found, skipped ({', '.join(gives)} not run)", flush=True)
                continue
            cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
            print(f"[bench] {name} ({', '.join(gives)}): {' '.join(cmd[1:])}", flush=True)
            started = time.monotonic()
            proc = subprocess.run(cmd)
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"[bench] {name}: {status} in {time.monotonic() - started:.0f} s", flush=True)
            record_run(name, cmd[2:], time.monotonic() - started, proc.returncode == 0)
        paper_scale_p3()
    rs = rows()
    m = machine()
    text = table(rs, m)
    (RESULTS / "summary.json").write_text(json.dumps({"machine": m, "rows": [asdict(r) for r in rs]}, indent=1) + "\n")
    (RESULTS / "summary.md").write_text(text + "\n")
    plot(rs, RESULTS / "summary.png")
    update_readme(text + "\n\n![benchmarks](benchmarks/results/summary.png)")
    print(text)
    print(f"\nresults: {RESULTS / 'summary.json'}, {RESULTS / 'summary.png'}")


if __name__ == "__main__":
    main()
