"""The benchmarks at two commits, measured in the same run, interleaved.

Run: .venv/bin/python bench/compare_commits.py [--before a54b82f] [--after HEAD]
                                               [--rounds N] [bench ...]
     .venv/bin/python bench/compare_commits.py [bench ...] --from-logs var/compare_commits/<stamp> ...
     (the tables again from kept outputs, no runs; bench names before --from-logs)

Issue 13's acceptance: "the benchmarks within 10 % of the commit before the move,
both measured in the same run". Each commit is checked out in a git worktree of
its own under var/ (``git worktree add --detach``, removed at the end whatever
happens); each bench runs from its own worktree (so the older commit runs its
own, older bench file, which imports the old module paths) with this
virtualenv's python, alternately before / after / before / after, so that the
load of a shared machine falls on both sides alike. Each bench's headline
figure (the one docs/BENCHMARKS.md calls its result) is parsed from its output;
the medians per side are printed with after/before and whether that is within
10 %. Where a bench measures its own baseline in the same process (a bare
nats-py loop, a raw publish, a raw read), the figure relative to that baseline
is compared too: it cancels most of the machine's load at that moment.

Benches run with smaller sizes than their defaults (BENCHES below) so that a
whole comparison takes minutes, not hours; the raw output of every run is kept
under var/compare_commits/<stamp>/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.10
RUN_TIMEOUT = 420  # s; a bench slower than this is reported as skipped


@dataclass
class Figure:
    value: float
    unit: str
    higher_is_better: bool
    vs_baseline: float | None = None  # value / the bench's own baseline, same process


@dataclass
class Bench:
    args: list[str]
    parse: object  # (stdout) -> {figure name: Figure}
    rounds: int = 2
    extra: dict = field(default_factory=dict)


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def parse_sweep(out: str) -> dict:
    """Rows of `streams consumers bare(ms) collector(ms) ratio`."""
    figs = {}
    for m in re.finditer(r"^\s*([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", out, re.M):
        size, bare, mine = int(m[1]), float(m[3]), float(m[4])
        figs[f"sweep ms, {size} streams"] = Figure(mine, "ms", False, mine / bare)
    m = re.search(r"collector RSS after .*?: ([\d.]+) MB", out)
    if m:
        figs["collector RSS"] = Figure(float(m[1]), "MB", False)
    return figs


def parse_capture(out: str) -> dict:
    """The JSON line at the end: one entry per configuration."""
    line = [ln for ln in out.splitlines() if ln.startswith("[{")][-1]
    figs = {}
    for r in json.loads(line):
        if not r["ok"]:
            raise ValueError(f"capture run not OK: {r}")
        kw = ",".join(f"{k}={v}" for k, v in {**r["capture"], **r["index"]}.items()) or "defaults"
        figs[f"captures/s, {r['mode']} {kw}"] = Figure(r["per_s"], "/s", True)
    return figs


def parse_replay(out: str) -> dict:
    rate = _num(re.search(r"RESULT replay ([\d,]+) msgs/s", out)[1])
    m = re.search(r"RESULT ratio to raw publish_async baseline \(([\d,]+) msgs/s\): ([\d.]+)x", out)
    return {"replay msgs/s": Figure(rate, "/s", True, float(m[2]))}


def parse_search(out: str) -> dict:
    """The SUMMARY line: before the count rework 'k: page P ms / count C ms', after it
    'sqlite k: p50 C / p99 D ms (baseline B)' for counts."""
    line = [ln for ln in out.splitlines() if ln.startswith("SUMMARY")][-1]
    figs = {}
    if "page " in line and " / count " in line:
        for m in re.finditer(r"(?:SUMMARY |, )([^:]+?): page ([\d.]+) ms / count ([\d.]+) ms", line):
            figs[f"{m[1]}: page ms"] = Figure(float(m[2]), "ms", False)
            figs[f"{m[1]}: count ms"] = Figure(float(m[3]), "ms", False)
    else:
        for m in re.finditer(r"(?:SUMMARY \w+ |; )([^:]+?): p50 ([\d.]+) / p99 ([\d.]+) ms"
                             r"(?: \(baseline ([\d.]+)\))?", line):
            base = float(m[4]) if m[4] else None
            figs[f"{m[1]}: count ms"] = Figure(float(m[2]), "ms", False,
                                               float(m[2]) / base if base else None)
    return figs


def parse_trace(out: str) -> dict:
    figs = {}
    for m in re.finditer(r"indexer, (.+?), writes in (.+?): .*?= ([\d,]+) msgs/s .*?, ([\d.]+)x "
                         r"the raw read", out):
        key = f"index msgs/s, {re.sub(r'[0-9,]+-row', 'N-row', m[1])}, writes in {m[2]}"
        figs[key] = Figure(_num(m[3]), "/s", True, float(m[4]))
    m = re.search(r"lookup: .*?p50 ([\d.]+) ms", out)
    if m:
        figs["trace(cid) lookup p50"] = Figure(float(m[1]), "ms", False)
    return figs


def search_args(tree: Path) -> list[str]:
    """The newer search bench also runs PostgreSQL unless told --db sqlite."""
    text = (tree / "bench" / "deadletter_search.py").read_text()
    return ["--rows", "100000"] + (["--db", "sqlite"] if '"--db"' in text else [])


# trace_index's --rows must exceed --n plus its 20,000-row "storm" correlation, or the fill
# makes no random ids to look up.
BENCHES = {
    "sweep": Bench([], parse_sweep, rounds=2),
    "deadletter_capture": Bench(["--n", "3000"], parse_capture, rounds=3),
    "deadletter_replay": Bench(["--n", "20000", "--profile-n", "0"], parse_replay, rounds=3),
    "deadletter_search": Bench([], parse_search, rounds=2, extra={"args": search_args}),
    "trace_index": Bench(["--n", "20000", "--rows", "100000"], parse_trace, rounds=3),
}


# Files the move renamed. The benches at HEAD still name some old paths in code_note() (a
# printed note of which code a run measured, by hash), which fails when the file is gone;
# in a worktree where the old path is missing and the new one exists, the note is pointed
# at the new path (only the worktree's copy of the bench changes; nothing measured does).
MOVED = {"streams/capture.py": "deadletters/capture.py", "streams/dlq.py": "deadletters/search.py",
         "lucent_console/bus/client.py": "lucent_bus/client.py",
         "lucent_console/bus/tail.py": "lucent_bus/tail.py"}


def repoint_notes(tree: Path) -> None:
    for bench in (tree / "bench").glob("*.py"):
        text = fixed = bench.read_text()
        for old, new in MOVED.items():
            if f'"{old}"' in text and not (tree / old).exists() and (tree / new).exists():
                fixed = fixed.replace(f'"{old}"', f'"{new}"')
                print(f"# {tree.name}/bench/{bench.name}: code_note path {old} -> {new} "
                      f"(old path gone at this commit)", flush=True)
        if fixed != text:
            bench.write_text(fixed)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def run_bench(name: str, bench: Bench, tree: Path, log: Path) -> dict:
    args = bench.extra["args"](tree) if "args" in bench.extra else bench.args
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NATS_URL", "DATABASE_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    started = time.perf_counter()
    # A session of its own: on a timeout or Ctrl-C the bench and its nats-server go together.
    proc = subprocess.Popen([sys.executable, f"bench/{name}.py", *args], cwd=tree, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    took = time.perf_counter() - started
    log.write_text(f"# {tree} {' '.join(args)} rc={proc.returncode} {took:.0f}s\n"
                   + stdout + "\n# stderr\n" + stderr)
    if proc.returncode:
        raise RuntimeError(f"{name} in {tree.name} exited {proc.returncode}; see {log}")
    figs = bench.parse(stdout)
    if not figs:
        raise RuntimeError(f"{name} in {tree.name}: no figure found in its output; see {log}")
    return {"took": took, "figs": figs}


def verdict(ratio: float, higher_is_better: bool) -> str:
    if abs(ratio - 1) <= TOLERANCE:
        return "yes"
    better = ratio > 1 if higher_is_better else ratio < 1
    return "no (after faster)" if better else "NO (after slower)"


def summarise(name: str, runs: dict) -> list[dict]:
    rows = []
    before, after = runs["before"], runs["after"]
    common = [k for k in before[0]["figs"] if all(k in r["figs"] for r in before + after)]
    for key in common:
        b = [r["figs"][key] for r in before]
        a = [r["figs"][key] for r in after]
        mb, ma = statistics.median(f.value for f in b), statistics.median(f.value for f in a)
        row = {"bench": name, "figure": key, "unit": b[0].unit, "before": mb, "after": ma,
               "ratio": ma / mb, "ok": verdict(ma / mb, b[0].higher_is_better),
               "before_runs": [f.value for f in b], "after_runs": [f.value for f in a]}
        if all(f.vs_baseline is not None for f in b + a):
            nb = statistics.median(f.vs_baseline for f in b)
            na = statistics.median(f.vs_baseline for f in a)
            row.update(base_before=nb, base_after=na, base_ratio=na / nb,
                       base_ok=verdict(na / nb, b[0].higher_is_better))
        rows.append(row)
    only = sorted(set().union(*(r["figs"] for r in before + after)) - set(common))
    if only:
        print(f"  {name}: not in both outputs, not compared: {', '.join(only)}", flush=True)
    return rows


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def table(rows: list[dict]) -> str:
    out = ["| bench | figure | before | after | after/before | within 10 %? "
           "| vs own baseline before / after | ratio | within 10 %? |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = (f"{r['base_before']:.3f}x / {r['base_after']:.3f}x | {r['base_ratio']:.3f} | "
                f"{r['base_ok']}" if "base_ratio" in r else "— | — | —")
        out.append(f"| {r['bench']} | {r['figure']} | {fmt(r['before'])} {r['unit']} | "
                   f"{fmt(r['after'])} {r['unit']} | {r['ratio']:.3f} | {r['ok']} | {base} |")
    return "\n".join(out)


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def compare(names: list[str], trees: dict, logs: Path, rounds: int | None) -> list[dict]:
    rows = []
    for name in names:
        bench = BENCHES[name]
        runs = {"before": [], "after": []}
        try:
            for i in range(rounds or bench.rounds):
                for side in ("before", "after"):
                    r = run_bench(name, bench, trees[side], logs / f"{name}-{side}-{i}.log")
                    runs[side].append(r)
                    figs = "; ".join(f"{k} {fmt(f.value)}" for k, f in list(r["figs"].items())[:3])
                    print(f"  {name} round {i + 1} {side:<6} {r['took']:5.0f}s  {figs}  [{load()}]",
                          flush=True)
        except subprocess.TimeoutExpired:
            print(f"  {name}: a run took over {RUN_TIMEOUT}s; skipped", flush=True)
            continue
        except Exception as exc:  # one failing bench must not lose the others' results
            print(f"  {name}: FAILED: {exc}", flush=True)
            continue
        got = summarise(name, runs)
        rows += got
        print(table(got), flush=True)
    return rows


def from_logs(dirs: list[str], names: list[str]) -> list[dict]:
    """The tables again from the kept outputs of earlier runs (several runs' rounds pooled)."""
    rows = []
    for name in names:
        runs = {"before": [], "after": []}
        for side in runs:
            for d in dirs:
                for log in sorted(Path(d).glob(f"{name}-{side}-*.log")):
                    text = log.read_text()
                    if " rc=0 " not in text.splitlines()[0]:
                        continue
                    out = text.split("\n", 1)[1].rsplit("\n# stderr\n", 1)[0]
                    runs[side].append({"figs": BENCHES[name].parse(out)})
        if runs["before"] and runs["after"]:
            print(f"  {name}: {len(runs['before'])} before, {len(runs['after'])} after", flush=True)
            rows += summarise(name, runs)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="a54b82f")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, help="rounds per bench (default: per bench, 2-3)")
    ap.add_argument("bench", nargs="*", help=f"default: all of {', '.join(BENCHES)}")
    ap.add_argument("--from-logs", nargs="+", metavar="DIR",
                    help="no runs: the tables again from var/compare_commits/<stamp> directories")
    args = ap.parse_args()
    names = args.bench or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown bench {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    if args.from_logs:
        print(table(from_logs(args.from_logs, names)))
        return
    shas = {side: git("rev-parse", "--verify", f"{ref}^{{commit}}")
            for side, ref in (("before", args.before), ("after", args.after))}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    logs = ROOT / "var" / "compare_commits" / stamp
    logs.mkdir(parents=True)
    trees = {side: ROOT / "var" / f"worktree-{side}-{stamp}" for side in shas}
    print(f"# compare_commits {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}", flush=True)
    for side, sha in shas.items():
        print(f"# {side}: {sha[:10]} {git('log', '-1', '--format=%s', sha)[:90]}", flush=True)
    print(f"# load at start: {load()}\n# logs: {logs}", flush=True)
    try:
        for side, sha in shas.items():
            git("worktree", "add", "--detach", str(trees[side]), sha)
            repoint_notes(trees[side])
        rows = compare(names, trees, logs, args.rounds)
    finally:
        for tree in trees.values():
            if tree.exists():
                git("worktree", "remove", "--force", str(tree))
        git("worktree", "prune")
    print(f"\n# load at end: {load()}")
    print(table(rows))
    (logs / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
