"""What the ranker's item-item term (inference/item_item.py) costs at serving time, next to the encoder pass
it rides on, measured in the same process on a trained run's real prompts.

For the first ``--batch`` users with train items: median / p90 milliseconds of the torch encoder pass
(``GraphGPT.encode`` on their predictive prompts; the exported ONNX encoder is the same graph) and of
``ItemItem.boosts`` on the same users, at batch 1 and ``--batch``, timed round-robin
(``encoder_bench.interleaved``) so machine load hits both alike; plus the term's memory (its CSR rows and the
item covariance). The term leaves the encoder as it is: its cost is the boosts' time and bytes.

    python benchmarks/item_item_bench.py RUN [--threads 1] [--batch 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.encoder_bench import interleaved  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="trained run folder with item_item/ (edgerec train)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args(argv)

    import torch

    from inference.item_item import ItemItem
    from training.recipe.train import load_run

    torch.set_num_threads(args.threads)
    term = ItemItem.load(args.run)
    if term is None:
        ap.error(f"{args.run} has no item_item/ (trained with item_item false, or too many items)")
    model, builder = load_run(args.run)
    users = [u for u in range(builder.graph.n_users) if len(builder.graph.user_items(u))][: args.batch]
    hists = [builder.graph.user_items(u) for u in users]
    pairs = zip(users, hists, strict=True)
    prompts = [builder.predictive(u, h, builder.neighbourhood(u, h)) for u, h in pairs]

    def tensors(n: int):
        return [torch.from_numpy(a) for a in builder.collate(prompts[:n])]

    batches = {n: tensors(n) for n in (1, len(users))}
    with torch.no_grad():
        vectors = model.encode(*batches[len(users)])[0].numpy()

    def encoder(n: int):
        def run() -> None:
            with torch.no_grad():
                model.encode(*batches[n])

        return run

    def boosts(n: int):
        return lambda: term.boosts(vectors[:n], hists[:n], weight=max(term.weight, 1.0))

    fns = {}
    for n in batches:
        fns[f"encoder b{n}"], fns[f"term b{n}"] = encoder(n), boosts(n)
    times = interleaved(fns, args.repeats)
    rows = term.rows
    nbytes = rows.data.nbytes + rows.indices.nbytes + rows.indptr.nbytes + term.item_cov.nbytes
    fitted = {k: term.params.get(k) for k in ("lam", "keep")}
    result = {
        "command": "python benchmarks/item_item_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(args.run),
        "items": term.n_items,
        "term": {"weight": term.weight, "top_n": term.top_n, **fitted},
        "term_mb": round(nbytes / 2**20, 2),
        "ms": {k: {"median": round(m, 3), "p90": round(p, 3)} for k, (m, p) in times.items()},
        "term_over_encoder": {
            f"b{n}": round(times[f"term b{n}"][0] / times[f"encoder b{n}"][0], 3) for n in batches
        },
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "prompt_len": int(batches[len(users)][0].shape[1]),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
