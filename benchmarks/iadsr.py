"""IADSR benchmarks (run by hand; results go to results/iadsr_*.md).

    python benchmarks/iadsr.py encoders [--n 1000] [--reps 2] [--llm2vec_n 0] [--full]
        MiniLM embedding time per 1,000 ml-100k prefix texts (the short-term texts IADSR encodes): the old path
        (encoder_batching library, float32, batch 32) vs the new ones side by side, bf16-vs-float32 agreement,
        duplicate counts; --full also encodes all 99,057 prefixes with the new default
    python benchmarks/iadsr.py encoder_variants [--n 384] [--reps 2] [--chunk 64] [--onnx]
        the default vs the old path, eager / math attention, ONNX Runtime (--onnx; float32 and int8) and 2 threads,
        interleaved chunk by chunk; writes its section above the older ones in iadsr_encoder_throughput.md
    python benchmarks/iadsr.py encoder_threads [--n 512] [--reps 2] [--rounds 3]
        the default encoder at 1 and 2 threads (and 2 with OMP_WAIT_POLICY=PASSIVE), one process per run
    python benchmarks/iadsr.py encoder_full
        every ml-100k e1 and prefix text as IADSR encodes them (default MiniLM encoder): the wall time
    python benchmarks/iadsr.py epochs [--epochs 2] [--max_len 50] [--backbones GRU4Rec,SASRec,Caser]
        per-epoch training time of IADSR-<backbone> vs <backbone> on ml-100k (target: at most 2x)
    python benchmarks/iadsr.py beauty [--users 3000] [--seeds 2020,2021,2022]
        HR@10 / NDCG@10 of GRU4Rec vs IADSR-GRU4Rec on an amazon-beauty user sample, alpha = 0.1
    python benchmarks/iadsr.py eval_history [--epochs 3] [--seeds 2020] [--max_len 10]
        one IADSR-GRU4Rec trained on ml-100k (alpha = 0.1, short_term item, MiniLM), its test set evaluated
        with iadsr_eval_history masked (keep rules probability and sign) and original; masked shares
    python benchmarks/iadsr.py show
        tabulates the result files of the three README runs (results/raw/iadsr_show_ml100k_<backbone>.json,
        written by run_recbole_denoise.py --model IADSR --iadsr_backbone=<backbone> ... --result_file=...)

Every run goes through run_recbole_denoise with the keys printed in the tables. The semantic embeddings
are cached, so the first IADSR run of a dataset pays for the encoding (reported separately).
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "results")
QUIET = {"show_progress": False, "state": "WARNING"}


def machine():
    from recbole_denoise.benchmark.executor import machine as describe

    return describe()


def write(name, lines):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


def ml100k_prefix_texts(n, max_items=20, sep="; "):
    """``n`` short-term prefix texts of ml-100k users, built as IADSR builds them."""
    import pandas as pd
    import recbole

    from recbole_denoise.model.semantic import sequence_text

    folder = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
    inter = pd.read_csv(os.path.join(folder, "ml-100k.inter"), sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items = pd.read_csv(os.path.join(folder, "ml-100k.item"), sep="\t")
    items.columns = [c.split(":")[0] for c in items.columns]
    title = dict(zip(items["item_id"], items["movie_title"].astype(str)))
    inter = inter.sort_values(["user_id", "timestamp"], kind="mergesort")
    texts = []
    for _, seq in inter.groupby("user_id")["item_id"]:
        seq = seq.tolist()
        texts += [sequence_text(title, seq[:t + 1], sep, max_items) for t in range(len(seq) - 1)]
    step = max(len(texts) // n, 1)
    return texts[::step][:n], len(texts)


def ml100k_all_texts(max_items=20, sep="; "):
    """Every ml-100k prefix text and every long-term (e1) text, built as IADSR builds them."""
    texts, _ = ml100k_prefix_texts(10 ** 9, max_items, sep)
    import pandas as pd
    import recbole

    from recbole_denoise.model.semantic import sequence_text

    folder = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
    inter = pd.read_csv(os.path.join(folder, "ml-100k.inter"), sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items = pd.read_csv(os.path.join(folder, "ml-100k.item"), sep="\t")
    items.columns = [c.split(":")[0] for c in items.columns]
    title = dict(zip(items["item_id"], items["movie_title"].astype(str)))
    inter = inter.sort_values(["user_id", "timestamp"], kind="mergesort")
    longs = [sequence_text(title, seq.tolist()[:-2], sep, max_items) for _, seq in inter.groupby("user_id")["item_id"]]
    return texts, longs


ENCODER_SETTINGS = [  # (label, encoder_batching, encoder_dtype, encoder_batch_size); the first is the old path
    ("old: library, float32, batch 32", "library", "float32", 32),
    ("sorted, float32, batch 32", "sorted", "float32", 32),
    ("sorted, bfloat16, batch 128", "sorted", "bfloat16", 128),
    ("new default: sorted, auto (bfloat16 here), batch 32", "sorted", "auto", 32),
]


def bench_encoders(args):
    """Old vs new encoder paths side by side on the same ml-100k prefix texts (interleaved repetitions),
    the cosine agreement of bf16 with float32, the duplicate counts, and optionally the whole prefix set."""
    import numpy as np
    import torch

    from recbole_denoise.llm.encoders import TextEncoder

    texts, total = ml100k_prefix_texts(args.n)
    all_prefixes, longs = ml100k_all_texts()
    dup_prefix = len(all_prefixes) - len(set(all_prefixes))
    long_in_prefix = sum(t in set(all_prefixes) for t in longs)
    encs, times, emb = {}, {}, {}
    for label, batching, dtype, bs in ENCODER_SETTINGS:
        encs[label] = TextEncoder(kind="sentence_transformers", max_length=128, batch_size=bs,
                                  truncation_side="left", dtype=dtype, batching=batching)
        times[label] = []
    for rep in range(args.reps):
        for label, *_ in (ENCODER_SETTINGS if rep % 2 == 0 else ENCODER_SETTINGS[::-1]):
            t = time.perf_counter()
            emb[label] = encs[label].encode(texts)
            times[label].append(time.perf_counter() - t)
            print(rep, label, f"{times[label][-1] * 1000 / len(texts):.1f} s/1000", flush=True)
    old = ENCODER_SETTINGS[0][0]
    per_k = {k: [v * 1000 / len(texts) for v in vs] for k, vs in times.items()}
    lines = ["# IADSR: text-encoder throughput", "",
             f"`nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/iadsr.py encoders --n {args.n} --reps {args.reps}"
             + (f" --llm2vec_n {args.llm2vec_n}" if args.llm2vec_n else "") + (" --full" if args.full else "") + f"` on {machine()}, torch threads {torch.get_num_threads()}; "
             f"git commit `{args.commit}`.",
             f"all-MiniLM-L6-v2 (sentence_transformers), encoder_max_length 128, cut from the left; {len(texts)} "
             f"ml-100k short-term prefix texts (every {max(total // args.n, 1)}th of the {total}; last 20 titles "
             f"joined by '; '), the same texts for every setting, {args.reps} interleaved repetitions (order "
             "reversed every other one). Minutes for all prefixes = median s per 1,000 x the whole set; the "
             "sorted path also skips the duplicates (below), which this projection does not count.", "",
             "| setting (encoder_batching, encoder_dtype, encoder_batch_size) | min s / 1,000 texts | median s / "
             "1,000 | speed-up vs old (median) | est. min for all 99,057 prefixes |", "|---|---|---|---|---|"]
    for label, *_ in ENCODER_SETTINGS:
        med = statistics.median(per_k[label])
        lines.append(f"| {label} | {min(per_k[label]):.1f} | {med:.1f} | "
                     f"{statistics.median(per_k[old]) / med:.2f}x | {med * total / 1000 / 60:.1f} |")
    ref = emb[ENCODER_SETTINGS[1][0]]  # float32, sorted (== old path to 1e-6, checked below)
    lines += ["", f"Agreement with float32 (against \"{ENCODER_SETTINGS[1][0]}\", same texts):", ""]

    def centred(x):
        x = x - x.mean(0, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for label, *_ in ENCODER_SETTINGS:
        if label == ENCODER_SETTINGS[1][0]:
            continue
        cos = (emb[label] * ref).sum(1)
        s_new, s_ref = centred(emb[label]) @ centred(emb[label]).T, centred(ref) @ centred(ref).T
        diff = np.abs(s_new - s_ref)[np.triu_indices(len(texts), 1)]
        top_new = np.argsort(-s_new + 2 * np.eye(len(texts)), 1)[:, :10]
        top_ref = np.argsort(-s_ref + 2 * np.eye(len(texts)), 1)[:, :10]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_new, top_ref)])
        lines.append(f"- {label}: cosine to the float32 embedding min {cos.min():.6f}, 0.1% quantile "
                     f"{np.quantile(cos, 0.001):.6f}, median {np.median(cos):.6f}; IADSR's text similarities "
                     f"(centred, as `semantic_center` uses them) over {len(diff)} pairs: max |diff| "
                     f"{diff.max():.4f}, mean |diff| {diff.mean():.5f}; top-10 most similar texts shared "
                     f"{overlap:.3f}")
    lines += ["", f"Duplicates in ml-100k (whole set): {dup_prefix} of {total} prefix texts are repeats of another "
              f"prefix ({100 * dup_prefix / total:.2f}%), encoded once by `encoder_batching: sorted`; "
              f"{long_in_prefix} of {len(longs)} long-term (e1) texts equal a prefix text (they are encoded in "
              "their own table, so still once more)."]
    if args.llm2vec_n:  # the IADSR default encoder (packaged SmolLM2 through llm2vec): old vs new, interleaved
        sub = texts[::max(len(texts) // args.llm2vec_n, 1)][:args.llm2vec_n]
        pair = [ENCODER_SETTINGS[0], ENCODER_SETTINGS[-1]]
        l2v = {label: TextEncoder(kind="llm2vec", max_length=128, batch_size=bs, truncation_side="left", dtype=dt,
                                  batching=b) for label, b, dt, bs in pair}
        secs, out = {label: [] for label, *_ in pair}, {}
        for rep in range(args.reps):
            for label, *_ in (pair if rep % 2 == 0 else pair[::-1]):
                t = time.perf_counter()
                out[label] = l2v[label].encode(sub)
                secs[label].append((time.perf_counter() - t) * 1000 / len(sub))
        cos = (out[pair[0][0]] * out[pair[1][0]]).sum(1)
        med = {k: statistics.median(v) for k, v in secs.items()}
        lines += ["", f"SmolLM2-135M through llm2vec (IADSR's default `encoder`), {len(sub)} of the same texts, "
                  f"{args.reps} interleaved repetitions:", "",
                  "| setting | min s / 1,000 texts | median s / 1,000 | speed-up vs old (median) | est. min for all |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {min(secs[k]):.1f} | {med[k]:.1f} | {med[pair[0][0]] / med[k]:.2f}x | "
                  f"{med[k] * total / 1000 / 60:.0f} |" for k in secs]
        lines += ["", f"llm2vec new vs old: cosine min {cos.min():.5f}, median {np.median(cos):.5f}."]
    if args.full:
        enc = encs[ENCODER_SETTINGS[-1][0]]
        t = time.perf_counter()
        full = enc.encode(all_prefixes)
        sec = time.perf_counter() - t
        lines += ["", f"Whole set, new default, one run: {len(all_prefixes)} prefix texts ({len(set(all_prefixes))} "
                  f"distinct) encoded in {sec / 60:.1f} min ({full.shape[0]} x {full.shape[1]})."]
    write("iadsr_encoder_throughput.md", lines + ["", args.before.rstrip("\n")] if args.before else lines)


class _MathAttention:
    """The default encoder with torch's math SDPA kernel instead of the CPU flash kernel (benchmark only)."""

    def __init__(self, enc):
        self.enc = enc

    def encode(self, texts):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return self.enc.encode(texts)


def _eager_attention(dtype):
    """The default encoder (sorted, ``dtype``) with BERT's eager attention instead of SDPA (benchmark only)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from recbole_denoise.llm.encoders import TextEncoder, _float32_hidden_states

    enc = TextEncoder(kind="sentence_transformers", max_length=128, batch_size=32, truncation_side="left",
                      dtype=dtype)
    m = SentenceTransformer(enc._path, device="cpu", local_files_only=True,
                            model_kwargs={"attn_implementation": "eager"})
    if enc.dtype != "float32":
        m[0].auto_model.to(getattr(torch, enc.dtype))
        m[0].auto_model.register_forward_hook(_float32_hidden_states)
    m.max_seq_length, m.tokenizer.truncation_side = 128, "left"
    enc.model, enc._tokenizer = m, m.tokenizer
    return enc


class _OnnxMiniLM:
    """MiniLM exported to ONNX (torch.onnx, TorchScript exporter) and run by ONNX Runtime on the CPU, optionally
    with ORT's dynamic int8 quantisation; the same token-sorted batches of 32, mean pooling, L2 norm. Needs
    ``pip install onnxruntime onnx`` (not dependencies of the package: benchmark only)."""

    def __init__(self, folder, int8=False, threads=1):
        import tempfile

        import onnxruntime as ort
        import torch
        from transformers import AutoModel, AutoTokenizer

        from recbole_denoise.llm.encoders import TextEncoder

        path = TextEncoder(kind="sentence_transformers", dtype="float32")._path
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.truncation_side = "left"
        onnx_path = os.path.join(folder, "minilm.onnx")
        if not os.path.exists(onnx_path):
            model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
            x = self.tok(["a b", "a b c d"], padding=True, return_tensors="pt")
            names = ["input_ids", "attention_mask", "token_type_ids"]
            torch.onnx.export(model, tuple(x[k] for k in names), onnx_path, dynamo=False, input_names=names,
                              output_names=["last_hidden_state"], opset_version=17,
                              dynamic_axes={k: {0: "b", 1: "s"} for k in names + ["last_hidden_state"]})
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q = os.path.join(folder, "minilm-int8.onnx")
            if not os.path.exists(q):
                quantize_dynamic(onnx_path, q, weight_type=QuantType.QInt8)
            onnx_path = q
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    def encode(self, texts):
        import numpy as np

        lengths = [len(i) for i in self.tok(texts, truncation=True, max_length=128)["input_ids"]]
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out = np.zeros((len(texts), 384), np.float32)
        for start in range(0, len(texts), 32):
            rows = order[start:start + 32]
            x = self.tok([texts[i] for i in rows], truncation=True, max_length=128, padding=True, return_tensors="np")
            h = self.session.run(None, {k: x[k].astype(np.int64) for k in
                                        ("input_ids", "attention_mask", "token_type_ids")})[0]
            m = x["attention_mask"][..., None].astype(np.float32)
            v = (h * m).sum(1) / m.sum(1)
            out[rows] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def bench_encoder_variants(args):
    """Issue 16 item 4, second round: the default (sorted, auto = bf16 here, SDPA flash attention) against the
    old path, BERT's eager attention, the math SDPA kernel, ONNX Runtime (float32, dynamic int8; --onnx) and 2
    torch threads, on the same texts. Timing is interleaved chunk by chunk (every setting encodes chunk c, in
    an order rotated per chunk, before any encodes chunk c+1), so a change of machine load hits every setting
    alike; ratios are per chunk, then the median. The section goes above the older ones in
    results/iadsr_encoder_throughput.md."""
    import tempfile

    import numpy as np
    import torch

    from recbole_denoise.llm.encoders import TextEncoder

    texts, total = ml100k_prefix_texts(args.n)
    all_prefixes, longs = ml100k_all_texts()
    distinct = len(set(all_prefixes))
    st = dict(kind="sentence_transformers", max_length=128, truncation_side="left")
    default = TextEncoder(**st, batch_size=32, dtype="auto")
    settings = [  # (label, encoder, torch threads)
        ("old @1 thread: library, float32, batch 32", TextEncoder(**st, batch_size=32, dtype="float32",
                                                                   batching="library"), 1),
        ("old @2 threads", None, 2),
        (f"default @1 thread: sorted, auto ({default.dtype}), batch 32, SDPA (CPU flash kernel)", default, 1),
        ("default @2 threads", default, 2),
        ("eager attention (BERT's matmul + softmax), bf16 @1", _eager_attention("bfloat16"), 1),
        ("SDPA math kernel, bf16 @1", _MathAttention(default), 1),
        ("sorted, float32 @1 (reference for cosines)", TextEncoder(**st, batch_size=32, dtype="float32"), 1),
    ]
    settings[1] = ("old @2 threads: library, float32, batch 32", settings[0][1], 2)
    if args.onnx:
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"--onnx needs ONNX Runtime and onnx (not dependencies of recbole-denoise): "
                             f"pip install onnxruntime==1.32.0 onnx==1.23.2 ({e})")
        folder = tempfile.mkdtemp(prefix="minilm-onnx-")
        settings += [("ONNX Runtime float32 @1", _OnnxMiniLM(folder), 1),
                     ("ONNX Runtime dynamic int8 @1", _OnnxMiniLM(folder, int8=True), 1)]
    labels = [s[0] for s in settings]
    old1, old2, new1, new2 = labels[:4]
    ref = labels[6]
    chunks = [texts[i:i + args.chunk] for i in range(0, len(texts), args.chunk)]
    secs = {label: np.zeros((args.reps, len(chunks))) for label in labels}
    emb = {label: [] for label in labels}
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        for rep in range(args.reps):
            for c, chunk in enumerate(chunks):
                k = (rep * len(chunks) + c) % len(settings)
                for label, enc, threads in settings[k:] + settings[:k]:
                    torch.set_num_threads(threads)
                    t = time.perf_counter()
                    out = enc.encode(chunk)
                    secs[label][rep, c] = time.perf_counter() - t
                    if rep == 0:
                        emb[label].append(out)
                torch.set_num_threads(1)
                load.append(os.getloadavg()[0])
            print(rep, {label: f"{secs[label][rep].sum() * 1000 / len(texts):.1f}" for label in labels}, flush=True)
    emb = {label: np.concatenate(v) for label, v in emb.items()}
    per_k = {label: v.sum(1) * 1000 / len(texts) for label, v in secs.items()}   # s per 1,000, per repetition
    chunk_ratio = {label: np.median(secs[old1] / secs[label]) for label in labels}
    vs_new = {label: np.median(secs[label] / secs[new1]) for label in labels}
    work = distinct  # what the sorted path encodes: each distinct prefix text once; e1 texts are copied (below)
    lines = ["## Round 2 (issue 16 item 4): attention kernels, ONNX Runtime, 2 threads, e1 sharing", "",
             f"`nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/iadsr.py encoder_variants --n {args.n} --reps "
             f"{args.reps} --chunk {args.chunk}" + (" --onnx" if args.onnx else "") + f"` on {machine()}; git commit "
             f"`{args.commit}`; 1-minute load average during the run min {min(load):.1f}, median "
             f"{statistics.median(load):.1f}, max {max(load):.1f} (2 cores, shared with other engineers' jobs).",
             f"all-MiniLM-L6-v2, encoder_max_length 128, cut from the left; {len(texts)} ml-100k prefix texts (every "
             f"{max(total // args.n, 1)}th of {total}), {len(chunks)} chunks of {args.chunk}; each chunk is encoded "
             f"by every setting in turn (order rotated per chunk), {args.reps} repetitions. '@2' = "
             "torch.set_num_threads(2) for that call only. Ratios are medians over chunks and repetitions of "
             "per-chunk time ratios. Projection: median s per 1,000 x the "
             f"{work} distinct prefix texts (the sorted path encodes each once; the 943 e1 texts are now copied "
             "from the prefix table).", "",
             "| setting | min s / 1,000 | median s / 1,000 | speed-up vs old @1 (per chunk) | time vs default @1 "
             "(per chunk) | cosine to float32: min / median | est. min for the whole set |",
             "|---|---|---|---|---|---|---|"]
    for label in labels:
        cos = (emb[label] * emb[ref]).sum(1)
        med = float(np.median(per_k[label]))
        lines.append(f"| {label} | {per_k[label].min():.1f} | {med:.1f} | {chunk_ratio[label]:.2f}x | "
                     f"{vs_new[label]:.2f} | {cos.min():.6f} / {np.median(cos):.6f} | {med * work / 1000 / 60:.1f} |")
    thread_gain = float(np.median(secs[new1] / secs[new2]))
    old_gain = float(np.median(secs[old1] / secs[old2]))
    new_vs_old2 = float(np.median(secs[old2] / secs[new2]))
    lines += ["", f"2 threads vs 1: default {thread_gain:.2f}x, old path {old_gain:.2f}x (per chunk, median). "
              f"Default @2 vs old @2 (the issue's 'today', measured at 2 threads on an idle machine: 41.5 min): "
              f"{new_vs_old2:.2f}x, so {41.5 / new_vs_old2 * distinct / total:.1f} min for the {distinct} distinct "
              f"prefixes on an idle machine (41.5 min x {distinct}/{total} / {new_vs_old2:.2f}), valid only if the "
              "2-thread ratio measured here transfers to an idle machine, i.e. only at a low load average.", ""]
    write_encoder_section(lines, replace="## Round 2")


def _time_default_encoder(n, reps):
    """(child of encoder_threads) time the default MiniLM encoder on ``n`` prefix texts; prints one JSON line."""
    import torch

    from recbole_denoise.llm.encoders import TextEncoder

    texts, _ = ml100k_prefix_texts(n)
    enc = TextEncoder(kind="sentence_transformers", max_length=128, batch_size=32, truncation_side="left",
                      dtype="auto")
    enc.encode(texts[:32])  # warm-up (oneDNN kernels)
    secs = []
    for _ in range(reps):
        t = time.perf_counter()
        enc.encode(texts)
        secs.append((time.perf_counter() - t) * 1000 / len(texts))
    print(json.dumps({"s_per_1000": secs, "threads": torch.get_num_threads(), "dtype": enc.dtype,
                      "load": os.getloadavg()[0]}))


THREAD_SETTINGS = [  # (label, environment)
    ("1 thread", {"OMP_NUM_THREADS": "1"}),
    ("2 threads (torch's default here)", {"OMP_NUM_THREADS": "2"}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}),
]


def bench_encoder_threads(args):
    """The default encoder at 1 and 2 threads, each in its own process (OpenMP's thread count and wait policy
    are fixed when a process starts), alternating settings round by round; the load average is recorded per
    run, since on 2 shared cores 2 OpenMP threads stall whenever another job takes one core."""
    import subprocess

    rows = {label: [] for label, _ in THREAD_SETTINGS}
    for rnd in range(args.rounds):
        for label, env in (THREAD_SETTINGS if rnd % 2 == 0 else THREAD_SETTINGS[::-1]):
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, "_time_default", "--n", str(args.n), "--reps",
                                  str(args.reps)], env={**os.environ, **env}, capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            r["load_before"] = load
            rows[label].append(r)
            print(rnd, label, r, flush=True)
    _, total = ml100k_prefix_texts(1)
    distinct = len(set(ml100k_all_texts()[0]))
    lines = ["## Threads (issue 16 item 4): the default encoder at 1 and 2 threads", "",
             f"`nice -n 10 python benchmarks/iadsr.py encoder_threads --n {args.n} --reps {args.reps} --rounds "
             f"{args.rounds}` on {machine()}; git commit `{args.commit}`. The default encoder (sorted, auto = "
             f"bfloat16 here, batch 32, SDPA) on {args.n} ml-100k prefix texts, one process per run (after a "
             f"warm-up batch, {args.reps} timed passes), settings alternating round by round. 1-minute load "
             "average before each run (it includes nothing of this benchmark's own but the previous run's tail). "
             f"Projection: s per 1,000 x the {distinct} distinct prefix texts (of {total}) the sorted path encodes.", "",
             "| setting | runs: s / 1,000 texts (load average before the run) | min s / 1,000 | est. min for the "
             "whole set at the min | at the median |", "|---|---|---|---|---|"]
    for label, _ in THREAD_SETTINGS:
        vals = [min(r["s_per_1000"]) for r in rows[label]]
        runs = "; ".join(f"{' / '.join(f'{x:.1f}' for x in r['s_per_1000'])} ({r['load_before']:.1f})"
                         for r in rows[label])
        lines.append(f"| {label} | {runs} | {min(vals):.1f} | {min(vals) * distinct / 1000 / 60:.1f} | "
                     f"{statistics.median(vals) * distinct / 1000 / 60:.1f} |")
    write_encoder_section(lines, replace="## Threads (issue 16 item 4)")


def bench_encoder_full(args):
    """The whole ml-100k set as IADSR encodes it with the default MiniLM encoder (issue 16 item 4's target):
    the 943 long-term (e1) texts, then every prefix text through ``cached_embeddings`` with the e1 table as
    ``known`` (as ``model/semantic.py`` does), in a fresh cache folder; wall time, thread count and load
    average go into a section of results/iadsr_encoder_throughput.md. Run it on an otherwise idle machine."""
    import logging
    import tempfile

    import torch

    from recbole_denoise.llm.encoders import TextEncoder, cached_embeddings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prefixes, longs = ml100k_all_texts()
    enc = TextEncoder(kind="sentence_transformers", max_length=128, batch_size=32, truncation_side="left",
                      dtype="auto")
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="iadsr-full-") as cache:
        t = time.perf_counter()
        long = cached_embeddings(enc, longs, cache, "long")
        short = cached_embeddings(enc, prefixes, cache, "prefix20", known=(longs, long))
        sec = time.perf_counter() - t
    load.append(os.getloadavg()[0])
    lines = ["## Whole set (issue 16 item 4's target)", "",
             f"`nice -n 10 python benchmarks/iadsr.py encoder_full` on {machine()}, torch threads "
             f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; git commit "
             f"`{args.commit}`; load average at the start {load[0]:.1f}, at the end {load[1]:.1f}.",
             f"Default MiniLM encoder ({enc.dtype}, sorted, batch 32, encoder_max_length 128, cut from the left): "
             f"{len(longs)} e1 texts, then {len(prefixes)} prefix texts ({len(set(prefixes))} distinct; the e1 "
             f"rows copied): **{sec / 60:.1f} min** in all ({short.shape[0]} x {short.shape[1]}); target <= 10 min."]
    write_encoder_section(lines)


def write_encoder_section(lines, replace=None):
    """Put ``lines`` as a new section at the top of results/iadsr_encoder_throughput.md (under its title),
    keeping every earlier section except one that starts with ``replace`` (an earlier run of the same kind)."""
    path = os.path.join(RESULTS, "iadsr_encoder_throughput.md")
    with open(path) as f:
        old = f.read()
    head = "# IADSR: text-encoder throughput\n"
    body = old[len(head):] if old.startswith(head) else old
    i = body.find(replace) if replace else -1
    if i >= 0:
        j = body.find("\n## ", i + 1)
        body = body[:i] + (body[j + 1:] if j >= 0 else "")
    section = "\n".join(lines)
    print(section)
    with open(path, "w") as f:
        f.write(head + "\n" + section + "\n" + ("\n" + body.lstrip("\n") if body.strip() else ""))
    print(f"wrote {path}")


def run(model, dataset, cfg):
    from recbole_denoise import run_recbole_denoise

    return run_recbole_denoise(model, dataset, config_dict={**QUIET, **cfg}, saved=False)


def bench_epochs(args):
    base = {"MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": args.epochs, "noise_ratio": 0.1,
            "encoder": "sentence_transformers", "encoder_max_length": args.encoder_max_length,
            "stopping_step": 1000, "cold_item_buckets": 0}
    rows = []
    for backbone in args.backbones.split(","):
        plain = run(backbone, "ml-100k", base)
        ours = run("IADSR", "ml-100k", {**base, "iadsr_backbone": backbone})  # embeddings cached by the first
        tp, ti = plain["timings"]["train_epoch_mean"], ours["timings"]["train_epoch_mean"]
        rows.append((backbone, tp, ti, ti / tp, plain["test_result"]["ndcg@10"], ours["test_result"]["ndcg@10"],
                     ours["timings"].get("model", 0.0), ours["timings"].get("export", 0.0)))
        print(rows[-1], flush=True)
    lines = ["# IADSR: epoch time vs its backbone on ml-100k", "",
             f"`python benchmarks/iadsr.py epochs --epochs {args.epochs} --max_len {args.max_len}` on {machine()}.",
             f"alpha = 0.1, MAX_ITEM_LIST_LENGTH {args.max_len}, train_batch_size 2048, encoder "
             f"sentence_transformers (MiniLM, encoder_max_length {args.encoder_max_length}), short_term prefix, every other key at its default. Mean training "
             f"time per epoch over {args.epochs} epochs; target ratio <= 2.", "",
             "| backbone | backbone s/epoch | IADSR s/epoch | ratio | NDCG@10 backbone | NDCG@10 IADSR | "
             "IADSR model build s (embeddings cached) | export s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {b} | {tp:.1f} | {ti:.1f} | {r:.2f} | {nb:.4f} | {ni:.4f} | {lo:.1f} | {ex:.1f} |"
              for b, tp, ti, r, nb, ni, lo, ex in rows]
    write(f"iadsr_epoch_time_ml100k_len{args.max_len}.md", lines)


def bench_beauty(args):
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {"sample_users": args.users, "noise_ratio": 0.1, "MAX_ITEM_LIST_LENGTH": 32, "epochs": args.epochs,
            "stopping_step": 3, "encoder": "sentence_transformers", "encoder_max_length": args.encoder_max_length,
            "cold_item_buckets": 5}
    out = {"GRU4Rec": [], "IADSR": []}
    for seed in seeds:
        for model in out:
            cfg = {**base, "seed": seed}
            if model == "IADSR":
                cfg["iadsr_backbone"] = "GRU4Rec"
            r = run(model, "amazon-beauty", cfg)
            out[model].append(r)
            print(model, seed, r["test_result"]["hit@10"], r["test_result"]["ndcg@10"], flush=True)
    raw = os.path.join(RESULTS, "raw")
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, "iadsr_beauty.json"), "w") as f:
        json.dump({m: [{k: r[k] for k in ("test_result", "denoise", "timings", "cold_items") if k in r}
                       for r in rs] for m, rs in out.items()}, f, indent=1, default=str)

    def stat(rs, key):
        v = [r["test_result"][key] for r in rs]
        return f"{statistics.mean(v):.4f} ± {statistics.pstdev(v):.4f}"

    lines = ["# IADSR vs GRU4Rec on amazon-beauty (user sample)", "",
             f"`python benchmarks/iadsr.py beauty --users {args.users} --seeds {args.seeds} --epochs {args.epochs}` "
             f"on {machine()}.",
             f"{args.users} sampled users (sample_seed 2020), alpha = 0.1 noise, MAX_ITEM_LIST_LENGTH 32, at most "
             f"{args.epochs} epochs with early stopping (patience 3) on valid NDCG@10, encoder sentence_transformers "
             f"(MiniLM, encoder_max_length {args.encoder_max_length}), every other key at its default. Mean ± std over seeds {args.seeds}.", "",
             "| model | HR@10 | NDCG@10 | HR@5 | NDCG@5 | edited | noise P | noise R | noise F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, rs in out.items():
        d = [r.get("model_denoise", {}) for r in rs]
        edited = statistics.mean(x.get("edited_fraction", 0.0) for x in d)
        prf = [statistics.mean(x.get(k, 0.0) or 0.0 for x in d) for k in ("precision", "recall", "f1")]
        lines.append(f"| {m if m == 'GRU4Rec' else 'IADSR-GRU4Rec'} | {stat(rs, 'hit@10')} | {stat(rs, 'ndcg@10')} | "
                     f"{stat(rs, 'hit@5')} | {stat(rs, 'ndcg@5')} | {edited:.3f} | "
                     + " | ".join(f"{v:.3f}" if m == "IADSR" else "-" for v in prf) + " |")
    lines += ["", "Cold-item view (IADSR Fig. 1), seed " + str(seeds[0]) + ": NDCG@5 per popularity bucket "
              "(1 = hottest) and IADSR's denoising ratio.", "",
              "| bucket | items | test rows | NDCG@5 GRU4Rec | NDCG@5 IADSR | IADSR denoise ratio |",
              "|---|---|---|---|---|---|"]
    for g, i in zip(out["GRU4Rec"][0]["cold_items"], out["IADSR"][0]["cold_items"]):
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {g['bucket']} | {g['items']} | {g['test_rows']} | {fmt(g['ndcg@5'])} | {fmt(i['ndcg@5'])} | "
                     f"{fmt(i.get('denoise_ratio'))} |")
    write("iadsr_beauty_gru4rec.md", lines)


def bench_eval_history(args, dataset="ml-100k", extra=None):
    """Train once per seed, then evaluate the same best checkpoint under each evaluation setting."""
    import tempfile

    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.pipeline import build_dataset
    from recbole_denoise.trainer import get_trainer

    settings = [("masked", "probability"), ("masked", "sign"), ("original", "-")]
    backbone = args.backbones if args.backbones in ("GRU4Rec", "SASRec", "Caser") else "GRU4Rec"
    base = {"iadsr_backbone": backbone, "encoder": "sentence_transformers", "short_term": "item",
            "MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": args.epochs, "noise_ratio": 0.1,
            "stopping_step": 1000, "export_denoised": False, "cold_item_buckets": 0, "beyond_accuracy_k": 0,
            "metric_decimal_place": 6, **QUIET, **(extra or {})}
    rows, t0 = [], time.time()
    for seed in [int(x) for x in args.seeds.split(",")]:
        ckpt = tempfile.mkdtemp(prefix="iadsr-eval-")
        config = Config("IADSR", dataset, config_dict={**base, "seed": seed, "checkpoint_dir": ckpt})
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        data, _ = prepare_dataset(config)
        train, valid, test = data_preparation(config, build_dataset(config, data))
        init_seed(config["seed"], config["reproducibility"])
        net = config.model_class(config, train._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config.model_class)(config, net)  # epoch hooks: mask roll-over
        t = time.time()
        trainer.fit(train, valid, saved=True, show_progress=False)   # model selection: default (masked, probability)
        train_s = time.time() - t
        tops = {}
        for history, keep in settings:
            net.eval_history = history
            if keep != "-":
                net.eval_keep = keep
            res = trainer.evaluate(test, load_best_model=True, show_progress=False)
            net.eval()
            top = []
            with torch.no_grad():  # the top-10 lists, to count the test rows whose list the setting changes
                for inter, history_index, _, _ in test:
                    scores = net.full_sort_predict(inter.to(config["device"])).view(len(inter), -1)
                    scores[:, 0] = float("-inf")
                    if history_index is not None:
                        scores[history_index] = float("-inf")
                    top.append(scores.topk(10, dim=1).indices.sort(dim=1).values)
            tops[history, keep] = torch.cat(top)
            rules = [keep] if keep != "-" else ["probability", "sign"]
            shares = {}
            for rule in rules:  # the share the masked history would drop (original: nothing is dropped)
                net.eval_keep = rule
                masked = positions = 0
                with torch.no_grad():
                    for batch in test:
                        inter = batch[0].to(config["device"])
                        _, _, k, _, valid_pos, _ = net.mask_scores(inter)
                        masked += int(((k < 0.5) & valid_pos).sum())
                        positions += int(valid_pos.sum())
                shares[rule] = masked / max(positions, 1)
            changed = float((tops[history, keep] != tops[settings[0]]).any(1).float().mean())
            rows.append((seed, history, keep, res["ndcg@10"], res["hit@10"], shares, changed, train_s))
            print(rows[-1], flush=True)
    title = ["# IADSR: prediction from the masked vs the original history (issue 15, items 13 and 16)", ""]
    lines = [f"## IADSR-{backbone}", "",
             f"`nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/iadsr.py eval_history --epochs {args.epochs} "
             f"--seeds {args.seeds} --max_len {args.max_len}"
             + (f" --backbones {backbone}" if backbone != "GRU4Rec" else "") + (" --append" if args.append else "")
             + f"` on {machine()}; git commit `{args.commit}`.",
             f"ml-100k, alpha = 0.1 noise, IADSR-{backbone}, encoder sentence_transformers (MiniLM), short_term item, "
             f"MAX_ITEM_LIST_LENGTH {args.max_len}, {args.epochs} epochs (no early stop), every other key at its "
             "default. One model per seed, trained once; the best-validation checkpoint (validated with the "
             "defaults: masked history, keep rule probability) is evaluated on the test rows under each "
             f"setting. Masked share: valid history positions of the test rows the masked history drops. "
             "Changed top-10: share of test rows whose top-10 set differs from the first row's setting. "
             f"Total wall time {time.time() - t0:.0f} s.", "",
             "| seed | iadsr_eval_history | iadsr_eval_keep | test NDCG@10 | test HR@10 | masked share | "
             "changed top-10 | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, history, keep, ndcg, hit, shares, changed, train_s in rows:
        share = (f"{shares[keep]:.3f}" if keep != "-" else
                 "0 (would be " + ", ".join(f"{shares[r]:.3f} {r}" for r in shares) + ")")
        lines.append(f"| {seed} | {history} | {keep} | {ndcg:.6f} | {hit:.6f} | {share} | {changed:.3f} | "
                     f"{train_s:.0f} |")
    path = os.path.join(RESULTS, "fidelity_iadsr_before_after.md")
    if args.append and os.path.isfile(path):
        with open(path) as f:
            title = [f.read().rstrip("\n"), ""]
    write("fidelity_iadsr_before_after.md", title + lines)


def show(args):
    lines = ["# IADSR on ml-100k: the README runs", "",
             "`python run_recbole_denoise.py --model IADSR --iadsr_backbone=<B> --dataset ml-100k --noise_ratio=0.1 "
             "--encoder=sentence_transformers --encoder_max_length=64 --MAX_ITEM_LIST_LENGTH=10 --epochs=1 "
             f"--result_file=results/raw/iadsr_show_ml100k_<B>.json` on {machine()}, in this order; noise P/R/F1/AUC of "
             "the exported decisions against the injected noise labels (training interactions only). Total s "
             "excludes encoding when the 943 long-term and 99,057 prefix texts were already cached (with "
             "MiniLM at 64 tokens the first run's encoding took about 22 minutes on this machine).", "",
             "| backbone | HR@10 | NDCG@10 | dropped | noise P | noise R | noise F1 | AUC | "
             "train s/epoch | export s | total s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in ("GRU4Rec", "SASRec", "Caser"):
        path = os.path.join(RESULTS, "raw", f"iadsr_show_ml100k_{b}.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            r = json.load(f)
        d, t = r["model_denoise"], r["timings"]
        lines.append(f"| {b} | {r['test_result']['hit@10']:.4f} | {r['test_result']['ndcg@10']:.4f} | "
                     f"{d['edited_fraction']:.3f} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | "
                     f"{d['auc']:.3f} | {t['train_epoch_mean']:.1f} | {t.get('export', 0):.1f} | "
                     f"{t['total']:.0f} |")
    write("iadsr_ml100k_show.md", lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["encoders", "encoder_variants", "encoder_threads", "encoder_full", "_time_default", "epochs", "beauty", "eval_history", "show"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=50)
    ap.add_argument("--backbones", default="GRU4Rec,SASRec,Caser")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--seeds", default="2020,2021,2022")   # eval_history: pass --seeds 2020
    ap.add_argument("--encoder_max_length", type=int, default=64)
    ap.add_argument("--append", action="store_true", help="eval_history: add to the results file")
    ap.add_argument("--reps", type=int, default=2, help="encoders: interleaved repetitions")
    ap.add_argument("--rounds", type=int, default=3, help="encoder_threads: rounds over the thread settings")
    ap.add_argument("--chunk", type=int, default=64, help="encoder_variants: texts per interleaved chunk")
    ap.add_argument("--onnx", action="store_true", help="encoder_variants: also ONNX Runtime (pip install onnxruntime onnx)")
    ap.add_argument("--full", action="store_true", help="encoders: also encode every ml-100k prefix (new path)")
    ap.add_argument("--llm2vec_n", type=int, default=0, help="encoders: also time llm2vec (SmolLM2) on this many")
    ap.add_argument("--commit", default=os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip())
    args = ap.parse_args()
    args.before = ""
    before = os.path.join(RESULTS, "iadsr_encoder_throughput.md")
    if args.what == "encoders" and os.path.isfile(before):  # keep the first (pre-issue-16) table as "before"
        with open(before) as f:
            old = f.read()
        i = old.find("\n## ") + 1  # keep every earlier section (rounds, threads, whole set, before)
        args.before = old[i:] if i > 0 else "## Before (issue 16)\n\n" + old.replace("# IADSR: text-encoder throughput\n\n", "")
    sys.path.insert(0, ROOT)
    {"encoders": bench_encoders, "encoder_variants": bench_encoder_variants,
     "encoder_threads": bench_encoder_threads, "encoder_full": bench_encoder_full, "_time_default": lambda a: _time_default_encoder(a.n, a.reps), "epochs": bench_epochs, "beauty": bench_beauty, "eval_history": bench_eval_history,
     "show": show}[args.what](args)


if __name__ == "__main__":
    main()
