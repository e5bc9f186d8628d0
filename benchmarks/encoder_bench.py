"""Encoder latency: torch vs ONNX Runtime (fp32) vs ONNX Runtime INT8, and the INT8 metric cost.

For the small default model (2 layers x 128-d, 4 heads, ``ModelConfig.preset("small")``) sized for
amazon-office (6,000 word pieces, 4,905 users, 2,420 items), or for a trained run's model with ``--run``:
median / p90 latency of one ``user_vector`` call at batch 1 and 16 and prompt lengths 32 / 64 / 128 on the
CPU, with a fixed thread count; the three encoders are timed round-robin so machine load hits them alike.
Inputs are left-padded prompts with a graph bias on id-token pairs (latency depends only on shapes). With
``--run`` the run is also exported with the INT8 encoder and the version is evaluated on valid and test with
both encoders (``training.evaluation.version_eval.evaluate_version``: ONNX + FAISS), which is the INT8
metric cost.

    python -m benchmarks.encoder_bench                                  # random-init small model
    python -m benchmarks.encoder_bench --run .edgerec/runs/amazon-office --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def inputs(vocab: int, n_words: int, b: int, length: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, length))
    lens = np.full(b, length)
    lens[1:] = rng.integers(length // 2, length + 1, b - 1)  # a mixed-length batch, like micro-batching
    mask = (np.arange(length)[None] >= (length - lens)[:, None]).astype(np.int64)
    ids = ids * mask
    node = (ids >= n_words) & (mask > 0)
    bias = rng.choice([1.0, 6 / 11, 4 / 11, 3 / 11, 0.0], size=(b, length, length)).astype(np.float32)
    bias *= node[:, :, None] & node[:, None, :]
    return ids, mask, bias


def timeit(fn, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """(median, p90) milliseconds of ``fn()``."""
    return interleaved({"fn": fn}, repeats, warmup)["fn"]


def interleaved(fns: dict, repeats: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """(median, p90) milliseconds per function, timed round-robin in a shuffled order each round, so that load
    from other processes on a shared machine hits every contender alike instead of whichever ran last."""
    rng = np.random.default_rng(0)
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            t = time.perf_counter()
            fns[names[i]]()
            times[names[i]].append((time.perf_counter() - t) * 1e3)
    out = {}
    for n, ts in times.items():
        ts.sort()
        out[n] = (statistics.median(ts), ts[min(len(ts) - 1, int(0.9 * len(ts)))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="trained run folder (its model, plus the INT8 metric cost)")
    ap.add_argument("--dataset", help="prepared dataset of --run when its recorded path does not resolve")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ONNX Runtime")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from inference.encoders import OnnxEncoder
    from inference.torch_model import GraphGPT, ModelConfig
    from training.export.exporter import _serving_model, export_onnx, quantize_int8

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.run:
        model = _serving_model(GraphGPT.load(args.run))
        source = f"trained run {args.run}"
    else:
        model = GraphGPT(ModelConfig.preset("small", n_words=6000, n_users=4905, n_items=2420)).eval()
        source = "random-init small default (office-sized vocabulary)"
    cfg = model.cfg
    print(f"# encoder latency, {source}: {cfg.n_layer} layers x {cfg.n_embd}-d, {cfg.n_head} heads")
    print(
        f"# torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"threads={args.threads}, repeats={args.repeats}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder.onnx"
        export_onnx(model, fp32, inputs(cfg.vocab_size, cfg.n_words, 2, 9, 0), "dynamo")
        int8 = quantize_int8(fp32, Path(tmp) / "encoder.int8.onnx")
        providers = ["CPUExecutionProvider"]
        enc = OnnxEncoder(fp32, providers, intra_op_threads=args.threads)
        enc8 = OnnxEncoder(int8, providers, intra_op_threads=args.threads)
        mib = [p.stat().st_size / 2**20 for p in (fp32, int8)]
        print(f"# encoder.onnx {mib[0]:.1f} MiB, encoder.int8.onnx {mib[1]:.1f} MiB")
        print("batch  len   torch ms (p90)    onnx ms (p90)     int8 ms (p90)   onnx/torch  int8/onnx")
        for b in (1, 16):
            for length in (32, 64, 128):
                x = inputs(cfg.vocab_size, cfg.n_words, b, length, b * 1000 + length)
                tx = tuple(torch.from_numpy(a) for a in x)

                def run_torch(tx=tx):
                    with torch.inference_mode():
                        model.user_vector(*tx)

                res = interleaved(
                    {
                        "torch": run_torch,
                        "onnx": lambda x=x: enc.encode(*x),
                        "int8": lambda x=x: enc8.encode(*x),
                    },
                    args.repeats,
                )
                t, o, q = res["torch"], res["onnx"], res["int8"]
                print(
                    f"{b:5d} {length:4d}  {t[0]:7.2f} ({t[1]:6.2f})  {o[0]:7.2f} ({o[1]:6.2f})  "
                    f"{q[0]:7.2f} ({q[1]:6.2f})   {t[0] / o[0]:8.2f}x  {o[0] / q[0]:8.2f}x"
                )
    if args.run:
        int8_cost(args.run, args.dataset, args.threads)


def int8_cost(run: Path, dataset: str | None, threads: int) -> None:
    """Export the run with the INT8 encoder and evaluate the version with both encoders (ONNX + FAISS).

    A third row evaluates fp32 with the service's prompt order for known users (train items as the graph
    stores them; training scores a seeded shuffle): the skew caused by history order alone."""
    from inference.encoders import open_encoder
    from training.evaluation.version_eval import evaluate_version
    from training.export.exporter import export_run, load_run_dataset

    data = load_run_dataset(run, dataset)
    keys = ("recall@20", "recall@40", "ndcg@100")
    rows = (("fp32", False, "training"), ("int8", True, "training"), ("fp32 serving order", False, "stored"))
    with tempfile.TemporaryDirectory() as tmp:
        version = export_run(run, Path(tmp) / "version", int8=True, dataset=dataset)
        print(f"\n# INT8 metric cost on {data.name} ({data.n_users} users, {data.n_items} items)")
        print("split  encoder             recall@20  recall@40  ndcg@100   eval s   delta vs fp32")
        for split in ("valid", "test"):
            base = None
            for name, int8, order in rows:
                enc = open_encoder(version, providers=["CPUExecutionProvider"], int8=int8, threads=threads)
                t = time.perf_counter()
                m = evaluate_version(version, data, split, encoder=enc, history_order=order)
                dt = time.perf_counter() - t
                vals = "   ".join(f"{m[k]:.4f}   " for k in keys)
                delta = "" if base is None else " ".join(f"{m[k] - base[k]:+.4f}" for k in keys)
                print(f"{split:5s}  {name:18s}  {vals} {dt:6.1f}   {delta}")
                base = base or m


if __name__ == "__main__":
    main()
