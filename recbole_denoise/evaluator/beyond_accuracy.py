"""Beyond-accuracy views of a trained model's test rankings (LLM4DSR §4.1.3 and §4.5.1).

* ``ild@k`` (Eq. 7): per user, the mean Jaccard distance between the category sets of every pair of
  items in the top-k list, averaged over users (only when the ``.item`` file has a category field);
* ``novelty@k`` (Eq. 8): per user, the mean of ``1 - popularity(i) / max popularity`` over the top-k
  list (popularity = training interactions), averaged over users;
* user groups (Fig. 10): the ``group_share`` of users with the most training interactions ("warm") and
  the same share with the fewest ("cold"), each with HR@k and NDCG@k of its test rows.
"""
import numpy as np

from recbole_denoise.evaluator.cold_items import target_ranks


def jaccard_distance(a, b):
    union = a | b
    return 1.0 - len(a & b) / len(union) if union else 0.0


def ild(lists, categories):
    """Eq. 7 over ``lists`` (rows of item ids) with ``categories`` ``{item: set}`` (missing = empty set)."""
    per_user = []
    for items in lists:
        sets = [categories.get(int(i), set()) for i in items]
        n = len(sets)
        if n < 2:
            continue
        total = sum(jaccard_distance(sets[i], sets[j]) for i in range(n - 1) for j in range(i + 1, n))
        per_user.append(2.0 * total / (n * (n - 1)))
    return float(np.mean(per_user)) if per_user else None


def novelty(lists, counts):
    """Eq. 8 with ``counts`` ``{item: training interactions}`` (an unseen item has popularity 0)."""
    top = max(counts.values()) if counts else 1
    return float(np.mean([np.mean([1.0 - counts.get(int(i), 0) / top for i in items]) for items in lists]))


def user_groups(users, ranks, user_counts, k=10, share=0.1):
    """``{"warm": {...}, "cold": {...}}``: users, rows, HR@k and NDCG@k of each group's test rows."""
    order = sorted(user_counts, key=lambda u: (user_counts[u], u))
    size = max(1, int(round(share * len(order))))
    hits = ranks < k
    ndcg = np.where(hits, 1.0 / np.log2(ranks + 2.0), 0.0)
    out = {}
    for name, members in (("warm", set(order[-size:])), ("cold", set(order[:size]))):
        rows = np.array([int(u) in members for u in users])
        out[name] = {"users": len(members), "rows": int(rows.sum()),
                     f"hit@{k}": float(hits[rows].mean()) if rows.any() else None,
                     f"ndcg@{k}": float(ndcg[rows].mean()) if rows.any() else None}
    return out


def item_categories(dataset, item_table, field):
    """``{RecBole item id: set of category tokens}`` from an atomic ``.item`` table's ``field``."""
    token2id = dataset.field2token_id[dataset.iid_field]
    out = {}
    for token, cats in zip(item_table[dataset.iid_field], item_table[field]):
        iid = token2id.get(str(token))
        if iid is not None:
            out[iid] = set(cats) if isinstance(cats, (list, tuple)) else {cats}
    return out


def beyond_accuracy(model, test_data, train_dataset, k=10, categories=None, group_share=0.1):
    """``{"ild@k" (with categories), "novelty@k", "user_groups"}`` of ``model`` on ``test_data``."""
    _, ranks, users, tops = target_ranks(model, test_data, topk=k)
    iid, uid = train_dataset.iid_field, train_dataset.uid_field
    items, item_n = np.unique(train_dataset.inter_feat[iid].numpy(), return_counts=True)
    people, user_n = np.unique(train_dataset.inter_feat[uid].numpy(), return_counts=True)
    out = {f"novelty@{k}": novelty(tops, dict(zip(items.tolist(), item_n.tolist()))),
           "user_groups": user_groups(users, ranks, dict(zip(people.tolist(), user_n.tolist())), k, group_share)}
    if categories:
        out[f"ild@{k}"] = ild(tops, categories)
    return out
