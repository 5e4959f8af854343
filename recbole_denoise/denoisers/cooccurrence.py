"""``CoocOutlier``: a simple, LLM-free denoiser that proves the interface.

Fitted on training data only: X is the binary user x item matrix of training interactions and
C = X^T X counts, for each item pair, the users who interacted with both. The similarity of items i, j
seen in sequence s of user u is the cosine ``(C_ij - X_ui X_uj) / sqrt(C_ii C_jj)`` (the user's own
co-occurrence is left out, so an item is not supported merely by the sequence it sits in). The noise
score of position t is ``1 - mean_{t' != t} sim(s_t, s_t')``: an item that no other item of the sequence
co-occurs with elsewhere scores 1. Items unseen in training score 1. Ties are broken towards rare items
by adding ``1e-3 / (1 + training popularity)``, so eta does not fall on a mass of equal scores. A replacement suggestion is the
item with the largest summed similarity to the sequence's other items that is not already in it.
"""
import numpy as np
import scipy.sparse as sp

from recbole_denoise.denoisers.base import Denoiser, register_denoiser


@register_denoiser("CoocOutlier")
class CoocOutlier(Denoiser):
    def fit(self, train):
        items = sorted({i for seq in train.items for i in seq})
        users = sorted(set(train.users))
        self.item_index = {it: k for k, it in enumerate(items)}
        self.item_tokens = np.array(items, dtype=object)
        self.user_index = {u: k for k, u in enumerate(users)}
        rows, cols = [], []
        for user, seq in zip(train.users, train.items):
            for it in seq:
                rows.append(self.user_index[user])
                cols.append(self.item_index[it])
        x = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), len(items)))
        x.data[:] = 1.0  # duplicates (overlapping windows) count once per user
        self.x = x
        self.cooc = (x.T @ x).tocsr()
        self.pop = np.asarray(self.cooc.diagonal()).ravel()

    def _similarity(self, user, idx):
        sub = self.cooc[idx][:, idx].toarray()
        u = self.user_index.get(user)
        if u is not None:
            own = self.x[u, idx].toarray().ravel()
            sub = sub - np.outer(own, own)
        norm = np.sqrt(np.outer(self.pop[idx], self.pop[idx]))
        return np.clip(sub, 0, None) / np.maximum(norm, 1e-12)

    def score(self, seqs):
        out = []
        for user, seq in zip(seqs.users, seqs.items):
            known = np.array([i in self.item_index for i in seq])
            scores = np.ones(len(seq))
            if len(seq) > 1 and known.any():
                idx = np.array([self.item_index[i] for i in seq if i in self.item_index])
                sim = self._similarity(user, idx)
                same = np.equal.outer(idx, idx)
                sim[same] = 1.0  # a repeated item supports itself
                np.fill_diagonal(sim, 0.0)
                # mean over all other positions (unknown items contribute similarity 0)
                scores[known] = 1.0 - sim.sum(axis=1) / (len(seq) - 1)
            pop = np.array([self.pop[self.item_index[i]] if i in self.item_index else 0.0 for i in seq])
            out.append(scores + 1e-3 / (1.0 + pop))
        return out

    def suggest(self, seqs, edits):
        out = []
        for k, pos in edits:
            context = [self.item_index[i] for p, i in enumerate(seqs.items[k]) if p != pos and i in self.item_index]
            if context:
                support = np.asarray(self.cooc[context].sum(axis=0)).ravel() / np.sqrt(np.maximum(self.pop, 1))
                support[[self.item_index[i] for i in seqs.items[k] if i in self.item_index]] = -np.inf
            else:
                support = self.pop.astype(float)
            out.append(self.item_tokens[int(np.argmax(support))])
        return out
