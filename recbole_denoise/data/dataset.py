"""RecBole dataset for the window protocol (benchmark files whose rows are history/target windows).

RecBole's ``SequentialDataset`` already reads benchmark files with an ``item_id_list`` field and skips
its own prefix augmentation. Two things are missing for windows, and are added here:

* histories are cut to their last ``MAX_ITEM_LIST_LENGTH`` items and padded to exactly that length, as
  RecBole's augmentation does for leave-one-out (Caser's vertical convolution needs the full length);
* ``item_length`` is the true history length of each row (RecBole 1.2.1 computes it with
  ``Series.agg(len)``, which pandas 3 turns into the column length).
"""
import torch.nn.functional as F
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureSource, FeatureType


class WindowDataset(SequentialDataset):
    def _benchmark_presets(self):
        suffix = self.config["LIST_SUFFIX"]
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        df = self.inter_feat
        for field in list(df.columns):
            if field + suffix in df.columns:
                setattr(self, f"{field}_list_field", field + suffix)
        for field in df.columns:
            if field.endswith(suffix) and self.field2type[field] in (FeatureType.TOKEN_SEQ, FeatureType.FLOAT_SEQ):
                df[field] = [seq[-max_len:] for seq in df[field].values]
                self.field2seqlen[field] = max_len
        self.set_field_property(self.item_list_length_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        df[self.item_list_length_field] = df[self.item_id_list_field].map(len).to_numpy()

    def _dataframe_to_interaction(self, data):
        """RecBole pads a token_seq field to its longest row only; pad history lists to the full length."""
        inter = super()._dataframe_to_interaction(data)
        suffix = self.config["LIST_SUFFIX"]
        for field in inter.interaction:
            if field.endswith(suffix) and self.field2type.get(field) == FeatureType.TOKEN_SEQ:
                value = inter[field]
                missing = self.field2seqlen[field] - value.shape[1]
                if missing > 0:
                    inter[field] = F.pad(value, (0, missing))
        return inter


POSITION_FIELD = "seq_position"


class PositionalSequentialDataset(SequentialDataset):
    """RecBole's leave-one-out ``SequentialDataset`` that also knows where each history item sits.

    RecBole's prefix augmentation turns a user's sequence into one row per target and forgets where a
    history starts once it is cut to ``MAX_ITEM_LIST_LENGTH``. A model that keeps state per interaction
    (IADSR's masks, its per-prefix text embeddings) needs the position of every history item in the
    user's full chronological sequence. Before augmenting, this class

    * records each user's full sequence of item ids, in RecBole's own order (``user_sequences``:
      ``{uid: np.ndarray of item ids}``; the last two items are the validation and test targets);
    * adds the interaction field ``seq_position`` (0-based index in that sequence), which the augmentation
      turns into ``seq_position_list`` aligned with ``item_id_list``.
    """

    def data_augmentation(self):
        import numpy as np
        import torch

        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)  # RecBole sorts (stably) the same way
        uids = self.inter_feat[self.uid_field].numpy()
        items = self.inter_feat[self.iid_field].numpy()
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]])
        ends = np.r_[starts[1:], len(uids)]
        positions = np.arange(len(uids)) - np.repeat(starts, ends - starts)
        self.user_sequences = {int(uids[s]): items[s:e].copy() for s, e in zip(starts, ends)}
        self.set_field_property(POSITION_FIELD, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)
        self.inter_feat[POSITION_FIELD] = torch.tensor(positions, dtype=torch.float64)
        super().data_augmentation()
