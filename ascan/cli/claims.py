"""``python -m ascan claims``: the paper's headline claims next to what this package
measures or computes on this machine.

The paper's headline numbers (abstract, OpenReview summary; the body with its tables
is not available to us, see ``shared/notes/paper-facts.md``): ADE20K mIoU 50.3,
ImageNet-1K 256x256 class-conditional gFID 2.23, GenEval 0.64, and a better
accuracy/latency trade-off than hybrid and efficient-attention peers. Accuracy,
FID and GenEval need trained weights and GPU-weeks; this command says so instead of
inventing a number, and measures what can be measured here: the architecture's
asymmetry, parameters and MACs, latency against timm peers, and the fused kernels'
speedup over eager.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ..complexity import count_params
from ..models.classifier import CONFIGS
from ..models.registry import build_model, list_models
from ..models.unet import UNET_CONFIGS
from .bench import (DEFAULT_PEERS, Timing, _HelpFormatter, _LoadMeter, machine_info, run_bench, to_json,
                    verdict)

NEEDS_TRAINING = "not measured: needs trained weights (no checkpoints exist for our configs) and GPU-weeks"


def _asymmetry() -> str:
    ok = []
    for c in CONFIGS.values():
        c_share = [lay.count("C") / len(lay) for lay in c.layouts]
        ok.append(c_share == sorted(c_share, reverse=True))
    for c in UNET_CONFIGS.values():
        c_share = [lay.count("C") / len(lay) for lay in c.layouts]
        ok.append(c_share == sorted(c_share, reverse=True))
    return (f"holds in all {len(ok)} variants (C share per stage non-increasing, checked from the configs)"
            if all(ok) else f"VIOLATED in {ok.count(False)} variants")


def _params(name: str, **kw) -> float:
    with torch.device("meta"):
        return count_params(build_model(name, **kw)) / 1e6


def _latency_rows(source: str | None, runs: int) -> list[dict]:
    """Rows from ``source`` (a bench.json), or measured now: ascan_t eager/fused interleaved,
    and each timm peer interleaved with ascan_t fused. Warnings (busy machine, incomplete
    file, peers not timed interleaved) go to stderr."""
    if source:
        with open(source) as f:
            data = json.load(f)
        machine = data.get("machine", {})
        if data.get("complete") is False:
            print(f"WARNING: {source} is incomplete (the bench run was "
                  f"{'interrupted' if data.get('interrupted') else 'still running or killed'}): "
                  f"{len(data['rows'])} row(s)", file=sys.stderr)
        if machine.get("busy"):
            print(f"WARNING: {source} was measured on a busy machine (load average "
                  f"{machine.get('load_avg_start')} at start, {machine.get('load_avg_end')} at end, "
                  f"{machine.get('threads')} threads): its timings are unreliable", file=sys.stderr)
        return data["rows"]
    try:
        import timm  # noqa: F401
        peers = list(DEFAULT_PEERS)
    except ImportError:
        peers = []
    device = torch.device("cpu")
    info = machine_info(device)
    meter = _LoadMeter(info)
    meter.start()
    rows = run_bench(["ascan_t"], ["fp32"], [1], 224, device, runs, max(2, runs // 4), False, peers,
                     ref_model="ascan_t")
    meter.end()
    return to_json(rows, info, {})["rows"]


def _timing(d):
    return Timing.from_dict(d)


def claims_table(rows: list[dict] | None) -> str:
    """Markdown table: claim | paper | here | status."""
    out = [("claim", "paper", "here (this machine / this code)", "status")]
    out.append(("asymmetric C/T distribution", "more C early, more T late", _asymmetry(), "checked"))
    out.append(("plain global attention", "no efficient-attention approximations",
                "attention op = softmax(qk^T)v exactly; fused impls tested against it", "checked"))
    t_params = _params("ascan_t")
    seg = _params("ascan_t_seg", num_classes=150) if _has("ascan_t_seg") else None
    out.append(("ImageNet-1K top-1 vs latency", "better trade-off than peers (table not available)",
                f"ascan_t: {t_params:.1f}M params", NEEDS_TRAINING))
    out.append(("ADE20K semantic segmentation", "mIoU 50.3",
                f"ascan_t_seg: {seg:.1f}M params" if seg else "segmentation model not built", NEEDS_TRAINING))
    out.append(("ImageNet 256x256 class-conditional", "gFID 2.23",
                f"ascan_unet_c2i_xl: {_params('ascan_unet_c2i_xl'):.0f}M params", NEEDS_TRAINING))
    out.append(("text-to-image", "GenEval 0.64",
                f"ascan_unet_t2i_xl: {_params('ascan_unet_t2i_xl') / 1e3:.2f}B params", NEEDS_TRAINING))
    if rows:
        ours = next((r for r in rows if r["model"] == "ascan_t" and r.get("fused")), None)
        if ours:
            fused, eager = _timing(ours["fused"]), _timing(ours["eager"])
            v = verdict(fused, eager)
            out.append(("fused kernels (this package)", "-",
                        f"ascan_t {ours['dtype']} b{ours['batch']}: fused {fused.cell()} ms vs eager "
                        f"{eager.cell()} ms, median [IQR] ({v.ratio:.2f}x), timed interleaved",
                        "fused faster than eager: " + v.text))
            for p in rows:
                if p["kind"] != "peer" or p.get("note") or p["dtype"] != ours["dtype"] or p["batch"] != ours["batch"]:
                    continue
                peer = _timing(p["eager"])
                if p.get("ref") and p.get("ref_model") == "ascan_t":
                    mine, how = _timing(p["ref"]), "timed interleaved"
                else:       # an older bench.json, or --ref another model: separate runs, less reliable
                    mine, how = fused, "timed in separate runs: less reliable"
                v = verdict(mine, peer)
                out.append((f"faster than {p['model']}", "faster inference than efficient-attention peers",
                            f"{p['model']} {peer.cell()} ms ({p['params_m']:.1f}M) vs ascan_t fused "
                            f"{mine.cell()} ms ({ours['params_m']:.1f}M): {v.ratio:.2f}x, {how}",
                            v.text))
        out.append(("latency on the paper's GPU", "GPU latency (setup not available)",
                    "this run: " + ("CUDA" if torch.cuda.is_available() else "CPU only, no GPU in this machine"),
                    "needs a GPU" if not torch.cuda.is_available() else "see rows above"))
    widths = [max(len(r[i]) for r in out) for i in range(4)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in out]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _has(name: str) -> bool:
    return name in list_models()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ascan claims", description=__doc__.split("\n\n")[0],
                                 formatter_class=_HelpFormatter)
    ap.add_argument("--from", dest="source", help="bench.json from `python -m ascan bench --out DIR` "
                                                  "instead of measuring now (default: measure now, ascan_t "
                                                  "fp32 batch 1 at 224^2 on the CPU, each peer timed "
                                                  "interleaved with it)")
    ap.add_argument("--runs", type=int, default=10, help="timed rounds per comparison when measuring now "
                                                         "(verdicts need >= 3)")
    ap.add_argument("--no-measure", action="store_true", help="skip latency (computed claims only)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    rows = None if args.no_measure else _latency_rows(args.source, args.runs)
    print(claims_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
