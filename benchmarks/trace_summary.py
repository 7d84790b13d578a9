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


# ---- The step's time by the part of the program that issued each operation (CPU traces).
# Each trace event is one top-level HLO instruction (a fusion, a convolution, a copy ...), named as
# in the compiled module's text (``compiled.as_text()``), whose metadata carries the jax name
# stack (``op_name``: ``transpose(jvp(...))`` marks the backward pass) and the Python stack that
# traced it (``stack_frame_id``, resolved through the module's StackFrames tables).

# (part, pattern on the innermost "file:function" frame that traced the instruction). First match wins.
PART_RULES = (
    ("conv kernel grad (taps)", re.compile(r"kernels\.py:weight_grad_by_shifted_dots")),
    ("depthwise (taps)", re.compile(r"kernels\.py:depthwise_conv_by_taps")),
    ("attention", re.compile(r"Attention|_attention|attention\.py:")),
    ("BatchNorm", re.compile(r"model\.py:BatchNorm")),
    ("assigner + loss", re.compile(r"(loss|assign)[a-z_]*\.py:|iou\.py:|anchors\.py:")),
    ("optimizer + EMA + norms", re.compile(r"optax|optim[a-z_]*\.py:|ema\.py:|step\.py:(make_train_step|global_norm)")),
    ("conv", re.compile(r"kernels\.py:|linear\.py:")),
    ("activations, adds, concat", re.compile(r"model\.py:|yolo11\.py:")),
)


def _tables(hlo_text: str) -> dict[int, list[str]]:
    """stack_frame_id -> ["file:function", ...] innermost first, from the module's tables."""
    def section(name):
        m = re.search(rf"\n{name}\n(.*?)(?:\n\n|\Z)", hlo_text, re.S)
        return m.group(1).splitlines() if m else []
    files = {int(a): b.strip('"') for a, b in (l.split(" ", 1) for l in section("FileNames"))}
    funcs = {int(a): b.strip('"') for a, b in (l.split(" ", 1) for l in section("FunctionNames"))}
    locs = {}
    for line in section("FileLocations"):
        i, rest = line.split(" ", 1)
        f = int(re.search(r"file_name_id=(\d+)", rest).group(1))
        fn = int(re.search(r"function_name_id=(\d+)", rest).group(1))
        locs[int(i)] = f"{os.path.basename(files.get(f, '?'))}:{funcs.get(fn, '?')}"
    parents, frame_loc = {}, {}
    for line in section("StackFrames"):
        i, rest = line.split(" ", 1)
        frame_loc[int(i)] = int(re.search(r"file_location_id=(\d+)", rest).group(1))
        parents[int(i)] = int(re.search(r"parent_frame_id=(\d+)", rest).group(1))
    stacks = {}
    for fid in frame_loc:
        chain, seen, cur = [], set(), fid
        while cur in frame_loc and cur not in seen:
            seen.add(cur)
            chain.append(locs.get(frame_loc[cur], "?"))
            cur = parents.get(cur, 0)
        stacks[fid] = chain
    return stacks


def instruction_parts(hlo_text: str) -> dict[str, str]:
    """Top-level instruction name -> part of the step: :data:`PART_RULES` on the innermost Python
    frame that traced it, convolutions split into forward / input grad / kernel grad (``op_name``
    ``transpose(...)`` is the backward pass; a kernel gradient's convolution does not have the
    batch first in its input's ``dim_labels``), copies and layout changes by kind."""
    stacks = _tables(hlo_text)
    bodies = {m.group(1): m.group(2) for m in re.finditer(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}\n", hlo_text, re.S)}
    entry = re.search(r"\nENTRY [^\n]*\{\n(.*?)\n\}\n", hlo_text, re.S)
    out = {}
    for line in (entry.group(1) if entry else hlo_text).splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w-]+)\(", line)
        if not m:
            continue
        name, kind = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        op_name = op_name.group(1) if op_name else ""
        frame = re.search(r"stack_frame_id=(\d+)", line)
        inner = (stacks.get(int(frame.group(1))) or ["?"])[0] if frame else "?"
        called = re.search(r"calls=%?([\w.\-]+)", line)
        full = line + "\n" + (bodies.get(called.group(1), "") if called else "")
        backward = "transpose(" in op_name
        part = next((label for label, pattern in PART_RULES if pattern.search(inner)), None)
        if part in ("conv", "activations, adds, concat", None) and " convolution(" in full:
            conv = next(c for c in full.splitlines() if " convolution(" in c)
            labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", conv)
            out_hw = re.search(r"= \w+\[\d+,(\d+),(\d+),\d+\]", conv)
            window = re.search(r"window=\{size=(\d+)x(\d+)", conv)
            # XLA rewrites a kernel gradient into a batch-first convolution of transposed operands
            # whose window is the feature map and whose output "image" is the kernel (<= 7 x 7).
            kernel_grad = (labels is not None and not labels.group(1).startswith("b")) or (
                out_hw is not None and window is not None and int(out_hw.group(1)) <= 7
                and int(window.group(1)) > int(out_hw.group(1)))
            if "feature_group_count" in conv:
                part = "grouped conv (lax)" + (" bwd" if backward else " fwd")
            elif kernel_grad:
                part = "conv kernel grad"
            else:
                part = "conv input grad" if backward else "conv forward"
        elif part == "conv" and backward and "kernels.py:" in inner:
            # a custom_vjp's backward is traced under its forward call's frame: the taps' slices and dots
            part = "conv kernel grad (taps)"
        elif part is None or part == "conv":
            if kind in ("copy", "transpose", "bitcast") or re.search(r"copy|transpose", name):
                part = "copies / layout"
            else:
                part = part or "other"
        if part in ("depthwise (taps)", "BatchNorm", "attention", "activations, adds, concat"):
            part += " bwd" if backward else " fwd"
        out[name] = part
    return out


def breakdown(trace_dir: str, hlo_text: str) -> dict[str, float]:
    """{part: microseconds} of the trace's events, parts by :func:`instruction_parts`."""
    path = find_trace(trace_dir)
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    parts = instruction_parts(hlo_text)
    totals = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or _HOST_NOISE.search(e.get("name", "")):
            continue
        if e["name"] in parts:
            totals[parts[e["name"]]] += float(e.get("dur", 0.0))
    return dict(totals)


def print_breakdown(parts: dict[str, float], steps: int = 1) -> None:
    total = sum(parts.values()) or 1.0
    print(f"  step by part ({total / 1e3 / steps:.1f} ms of XLA work per step):")
    for part, us in sorted(parts.items(), key=lambda t: -t[1]):
        print(f"    {part:32s} {100 * us / total:5.1f}%  {us / 1e3 / steps:9.2f} ms/step")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace_dir", help="a folder with a perfetto_trace.json.gz below it, or such a file")
    ap.add_argument("--top", type=int, default=25, help="operations and families listed (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1, help="steps in the trace (for per-step figures)")
    args = ap.parse_args()
    print_summary(summarize(args.trace_dir, args.top), args.steps)


if __name__ == "__main__":
    main()
