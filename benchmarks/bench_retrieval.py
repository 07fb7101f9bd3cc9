"""Build and query time and memory of certified retrieval: FAISS (top-k certificate) vs the exact torch index.

Gallery: ``N`` random unit embeddings of the dimension of the default LipSim model (read from the model:
``LipSim().embed(x).shape[1]``, today 2304 backbone features + 1 appended coordinate). Queries: gallery items plus
Gaussian noise, renormalised (cosine ~0.9 to their source), so that every query has a clear nearest item, as in
retrieval of a distorted copy. ``||g(q)||`` is set to 5 for all queries (it scales radii, not timings).

Columns: build seconds (adding the embeddings to the index; generating them is not counted), index MiB
(``N D 4`` bytes), RSS increase of the process during the build and its peak RSS (each size runs in a fresh process;
the peak includes the exact torch index's copy of the gallery), milliseconds per query for ``search`` (top-10) and
for ``certified_top1`` (FAISS: top-``k`` certificate; torch: exhaustive), and the median ratio of the FAISS radius to
the exhaustive one on the queries both were run on (<= 1 by construction).

Usage::

    nice -n 5 python benchmarks/bench_retrieval.py --sizes 100000,1000000 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def model_dimension() -> int:
    """Embedding dimension of the default LipSim (with the appended coordinate)."""
    from lipsim_metric import LipSim

    with torch.no_grad():
        return int(LipSim().embed(torch.rand(1, 3, 64, 64)).shape[1])


def bench_size(n: int, dim: int, queries: int, exact_queries: int, k: int, chunk: int, seed: int) -> dict:
    from lipsim_metric import LipSim
    from lipsim_metric.retrieval import certified_top1_embeddings, gallery_distances
    from lipsim_metric.retrieval_faiss import FaissIndex

    metric = LipSim(pretrained=False)  # only its projection/constant are used with raw embeddings
    g = torch.Generator().manual_seed(seed)
    rss0 = _rss_mib()
    index = FaissIndex(metric)
    build = 0.0
    sources = torch.randint(0, n, (queries,), generator=g)
    picked = torch.zeros(queries, dim)
    for start in range(0, n, chunk):
        block = _unit(torch.randn(min(chunk, n - start), dim, generator=g))
        inside = (sources >= start) & (sources < start + len(block))
        picked[inside] = block[sources[inside] - start]
        t = time.perf_counter()
        index.add(block)
        build += time.perf_counter() - t
        del block
    rss_build = _rss_mib() - rss0
    q = _unit(picked + 0.5 * torch.randn(queries, dim, generator=g) / dim**0.5)
    norms = torch.full((queries,), 5.0)
    t = time.perf_counter()
    index.search_embeddings(q, k=10)
    search_ms = (time.perf_counter() - t) * 1000 / queries
    t = time.perf_counter()
    cert = index.certified_top1_embeddings(q, norms, k=k)
    cert_ms = (time.perf_counter() - t) * 1000 / queries
    if not torch.equal(cert.item, sources):
        raise RuntimeError("FAISS top-1 is not the source item of every query")
    row = {"n": n, "dim": dim, "build_s": build, "index_mib": n * dim * 4 / 2**20, "rss_build_mib": rss_build,
           "faiss_search_ms": search_ms, "faiss_cert_ms": cert_ms, "k": k,
           "faiss_median_radius": float(cert.radius.median())}
    if exact_queries:
        # the exact torch index needs the same gallery as one tensor: reconstruct it from FAISS
        rss1 = _rss_mib()
        gallery = torch.from_numpy(index.index.reconstruct_n(0, n))
        row["torch_extra_mib"] = _rss_mib() - rss1
        sub = q[:exact_queries]
        t = time.perf_counter()
        distances = gallery_distances(sub, gallery)
        torch.sort(distances, dim=1, stable=True)
        row["torch_search_ms"] = (time.perf_counter() - t) * 1000 / exact_queries
        t = time.perf_counter()
        exact = certified_top1_embeddings(sub, gallery, norms[:exact_queries])
        row["torch_cert_ms"] = (time.perf_counter() - t) * 1000 / exact_queries
        ratio = cert.radius[:exact_queries] / exact.radius.clamp_min(1e-30)
        if not torch.equal(exact.item, cert.item[:exact_queries]) or bool((ratio > 1).any()):
            raise RuntimeError("the FAISS certificate disagrees with the exhaustive one")
        row["radius_ratio_median"] = float(ratio.median())
        del gallery, distances
    del index
    return row


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"## Certified retrieval at scale, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "", f"- command: `python benchmarks/bench_retrieval.py {' '.join(sys.argv[1:])}`",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
             f"{args.threads} thread(s) for torch and FAISS; torch {torch.__version__}",
             f"- gallery: random unit embeddings of dimension {rows[0]['dim']} (read from the default LipSim); "
             f"{args.queries} queries (noisy copies of gallery items), top-{args.k} certificate; exhaustive torch "
             f"figures on the first {args.exact_queries} queries", "",
             "| N | build s | index MiB | RSS +MiB (build) | peak RSS MiB | FAISS search ms/q | FAISS cert ms/q | "
             "torch search ms/q | torch cert ms/q | radius FAISS/exact (median) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['build_s']:.2f} | {r['index_mib']:,.0f} | {r['rss_build_mib']:,.0f} | "
                     f"{r.get('peak_rss_mib', float('nan')):,.0f} | "
                     f"{r['faiss_search_ms']:.1f} | {r['faiss_cert_ms']:.1f} | "
                     f"{r.get('torch_search_ms', float('nan')):.1f} | {r.get('torch_cert_ms', float('nan')):.1f} | "
                     f"{r.get('radius_ratio_median', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=None, help="override the model's dimension (quick tests only)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--exact-queries", type=int, default=10, help="queries also run on the exact torch index")
    parser.add_argument("--k", type=int, default=16, help="candidates of the FAISS certificate")
    parser.add_argument("--chunk", type=int, default=50000, help="embeddings generated and added at once")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    dim = args.dim or model_dimension()
    if args.single is not None:  # one size in this (fresh) process, JSON on stdout
        row = bench_size(args.single, dim, args.queries, args.exact_queries, args.k, args.chunk, args.seed)
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(row))
        return 0
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        # each size in its own process, so that its memory figures do not include the previous size's
        cmd = [sys.executable, __file__, "--single", str(n), "--dim", str(dim), "--queries", str(args.queries),
               "--exact-queries", str(args.exact_queries), "--k", str(args.k), "--chunk", str(args.chunk),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"N={n} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"N={n}: {rows[-1]}", file=sys.stderr, flush=True)
    print(to_markdown(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
