"""The cold-item view of IADSR Fig. 1: accuracy and denoising ratio per item-popularity bucket.

Items are ordered by training popularity (the number of times an item is a training target) and cut
into ``n_buckets`` *equal-frequency* buckets, each holding about the same share of training interactions:
bucket 1 holds the hottest items, bucket ``n_buckets`` the coldest (a few hot items fill bucket 1, the
long tail fills the last ones). Items never seen in training fall into the coldest bucket. Per bucket:

* ``ndcg@k``: NDCG@k (full ranking, as RecBole's evaluator) of the test rows whose target is in it;
* ``denoise_ratio``: the fraction of its history interactions a denoiser flagged (from a
  ``.denoise_scores`` table, any denoiser's or an exported model's); absent without a table.
"""
import numpy as np
import torch


def popularity_buckets(counts, n_buckets=5):
    """``{item: bucket}`` (1 = hottest) from ``{item: count}`` with about equal interaction mass per bucket."""
    if int(n_buckets) < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    items = sorted(counts, key=lambda i: (-counts[i], str(i)))
    mass = np.array([counts[i] for i in items], dtype=float)
    total = mass.sum()
    if total <= 0:
        return {i: n_buckets for i in items}
    before = np.concatenate([[0.0], np.cumsum(mass)[:-1]]) / total
    return {i: min(int(b * n_buckets) + 1, n_buckets) for i, b in zip(items, before)}


def training_counts(train_dataset):
    """``{item id: count}`` of training targets in a RecBole (sequential) training dataset."""
    ids, counts = np.unique(train_dataset.inter_feat[train_dataset.iid_field].numpy(), return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


@torch.no_grad()
def target_ranks(model, eval_data, device=None, topk=0):
    """``(target item ids, 0-based ranks)`` of every row of a RecBole full-sort evaluation loader; with
    ``topk`` > 0 also ``(user ids, top-k item ids)`` of each row (RecBole's ranking: padding and, where
    the loader has one, the history are excluded)."""
    was = model.training
    model.eval()
    device = device or next(model.parameters()).device
    targets, ranks, users, tops = [], [], [], []
    for interaction, history_index, _, _ in eval_data:
        interaction = interaction.to(device)
        scores = model.full_sort_predict(interaction).view(len(interaction), -1)
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        target = interaction[model.ITEM_ID]
        own = scores.gather(1, target.unsqueeze(1))
        ranks.append((scores > own).sum(1).cpu())
        targets.append(target.cpu())
        if topk:
            tops.append(scores.topk(topk, dim=1).indices.cpu())
            users.append(interaction[model.USER_ID].cpu())
    model.train(was)
    out = torch.cat(targets).numpy(), torch.cat(ranks).numpy()
    return out + (torch.cat(users).numpy(), torch.cat(tops).numpy()) if topk else out


def cold_item_analysis(model, test_data, train_dataset, scores_table=None, n_buckets=5, k=5):
    """One row per popularity bucket: items, training interactions, test rows, NDCG@k, denoise ratio."""
    counts = training_counts(train_dataset)
    bucket_of = popularity_buckets(counts, n_buckets)
    targets, ranks = target_ranks(model, test_data)
    ndcg = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    test_bucket = np.array([bucket_of.get(int(t), n_buckets) for t in targets])
    flagged_bucket = None
    if scores_table is not None and len(scores_table):
        token2id = train_dataset.field2token_id[train_dataset.iid_field]
        ids = [token2id.get(str(t), 0) for t in scores_table["item_id"]]
        flagged_bucket = (np.array([bucket_of.get(i, n_buckets) for i in ids]),
                          np.asarray(scores_table["flagged"], dtype=float))
    rows = []
    for b in range(1, n_buckets + 1):
        in_b = test_bucket == b
        row = {"bucket": b, "items": sum(v == b for v in bucket_of.values()),
               "train_interactions": int(sum(c for i, c in counts.items() if bucket_of[i] == b)),
               "test_rows": int(in_b.sum()), f"ndcg@{k}": float(ndcg[in_b].mean()) if in_b.any() else None}
        if flagged_bucket is not None:
            sel = flagged_bucket[0] == b
            row["denoise_ratio"] = float(flagged_bucket[1][sel].mean()) if sel.any() else None
        rows.append(row)
    return rows
