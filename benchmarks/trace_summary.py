"""Where the time of a profiled JAX step goes: top operations of a ``jax.profiler`` trace.

Run:  python benchmarks/trace_summary.py TRACE_DIR_OR_FILE [--top 25] [--steps N]
      (``benchmarks/train_step.py --profile DIR`` writes such traces and prints this summary)

Reads the newest ``perfetto_trace.json.gz`` under TRACE_DIR (written by
``jax.profiler.trace(..., create_perfetto_trace=True)``) and sums the durations of complete
events on the device tracks (``/device:GPU:0`` etc.), or, on a CPU-only trace, on the XLA
executor threads of ``/host:CPU``. Prints the busiest operations with their share, and the
shares of coarse groups (convolution and matmul kernels, reductions, copies and transposes,
other fusions), by the kernel or operation name. On a CPU trace, control flow (``while``,
``cond``) also counts the time of the operations inside it, so the shares add up to more than
100%; GPU kernel events do not nest.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

GROUPS = (  # first match wins; matched against the lower-cased name ("ynn": XLA:CPU's YNNPACK dot fusions)
    # "conv" alone would also take XLA's "loop_convert_fusion" (element-type casts)
    ("conv/matmul", re.compile(r"convolution|conv_general|cudnn|xmma|gemm|nvjet|cutlass|matmul|dot|wgrad|dgrad|"
                               r"fprop|sm\d\d_|ynn")),
    ("reduce", re.compile(r"reduce|reduction")),
    ("copy/transpose", re.compile(r"copy|transpose|memcpy|memset|concatenate|pad")),
    ("other fusion", re.compile(r".")),
)

# Host-side runtime events that are not operations of the computation.
_HOST_NOISE = re.compile(r"^\$|PjRt|PjitFunction|ThunkExecutor|Execute|ParseArguments|Handle inputs|"
                         r"AllocateOutputBuffers|TfrtCpu|ExecutePrepare")


def find_trace(trace_dir: str) -> str:
    """The newest ``perfetto_trace.json.gz`` under ``trace_dir``, or ``trace_dir`` itself when it
    is a file (such as the copy that ``benchmarks/gpu_run.sh`` keeps)."""
    if os.path.isfile(trace_dir):
        return trace_dir
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir} "
                                "(trace with jax.profiler.trace(dir, create_perfetto_trace=True))")
    return files[-1]


def group_of(name: str) -> str:
    """The coarse group of an operation or kernel name (first pattern of GROUPS that matches)."""
    return next(group for group, pattern in GROUPS if pattern.search(name.lower()))


def summarize(trace_dir: str, top: int = 25) -> dict:
    """``{'device': track name, 'total_us': ..., 'ops': [(name, us)], 'groups': {group: us},
    'families': [(name without its numeric suffix, us)], 'n_ops': ..., 'n_events': ...}``."""
    path = find_trace(trace_dir)
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, n in names.items() if "/device:" in n}
    on_device = bool(device_pids)
    totals = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        if on_device and e.get("pid") not in device_pids:
            continue
        if not on_device and _HOST_NOISE.search(e.get("name", "")):
            continue
        totals[e["name"]] += float(e.get("dur", 0.0))
    total = sum(totals.values())
    groups = collections.Counter()
    for name, us in totals.items():
        groups[group_of(name)] += us
    families = collections.Counter()  # "loop_add_fusion.12", "loop_add_fusion.3" -> "loop_add_fusion"
    for name, us in totals.items():
        families[re.sub(r"[._]\d+$", "", name)] += us
    track = ", ".join(sorted(names[p] for p in device_pids)) if on_device else "host XLA threads"
    return dict(path=path, device=track, total_us=total, ops=totals.most_common(top), groups=dict(groups),
                families=families.most_common(top), n_ops=len(totals),
                n_events=sum(1 for e in events if e.get("ph") == "X" and (not on_device or e.get("pid") in device_pids)))


def print_summary(s: dict, steps: int = 1) -> None:
    total = s["total_us"] or 1.0
    print(f"trace {s['path']}: {s['device']}, busy {s['total_us'] / 1e3 / steps:.1f} ms per step")
    for group, us in sorted(s["groups"].items(), key=lambda t: -t[1]):
        print(f"  {group:16s} {100 * us / total:5.1f}%  {us / 1e3 / steps:9.2f} ms/step")
    print(f"  {s.get('n_events', 0) / steps:.0f} events per step, {s.get('n_ops', 0)} distinct operations")
    print("  top operation families (numeric suffix dropped):")
    for name, us in s.get("families", []):
        print(f"    {100 * us / total:5.1f}%  {us / 1e3 / steps:9.3f} ms/step  {name[:110]}")
    print("  top operations:")
    for name, us in s["ops"]:
        print(f"    {100 * us / total:5.1f}%  {us / 1e3 / steps:9.3f} ms/step  {name[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace_dir", help="a folder with a perfetto_trace.json.gz below it, or such a file")
    ap.add_argument("--top", type=int, default=25, help="operations and families listed (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1, help="steps in the trace (for per-step figures)")
    args = ap.parse_args()
    print_summary(summarize(args.trace_dir, args.top), args.steps)


if __name__ == "__main__":
    main()
