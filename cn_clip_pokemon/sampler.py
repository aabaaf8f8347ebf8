"""Batches in which no two pairs share a text: identical texts are false negatives for CLIP's loss.

In-batch contrastive training treats every other text of a batch as a wrong answer. Two pictures
of 皮卡丘 in one batch make the model push 皮卡丘's picture away from "皮卡丘". So each *global*
batch (all ranks together: upstream gathers features across processes) holds each group at most
once. A group is whatever must not repeat: the text, or the Pokemon (several prompt templates of
one name are different texts with the same answer).

An epoch has ``ceil(pairs / global batch)`` batches, the same number every epoch (upstream derives
steps from it), and uses every pair once, except that a group with more pairs than there are
batches uses a fresh random subset of them each epoch. Batch by batch, groups are drawn at random
weighted by how many pairs they have left, and a group with one pair left for every batch left is
always drawn, so every group fits; a batch short of distinct groups is filled with random pairs of
groups not yet in it. Different seeds per epoch give different batches and different pictures.

Fewer distinct groups than a global batch: the batch shrinks to the number of groups (rounded down
to a multiple of the number of processes, at least one per process); it never crashes. Only with
fewer groups than processes do duplicates become unavoidable (logged).

An epoch's batches cost O(batches x groups) to draw (about 0.1 s for 649 Pokemon and 50,000
pairs): made for thousands of texts, not for MUGE's millions (use upstream's sampler there).
"""
import logging
import math
from collections import Counter

import numpy as np
from torch.utils.data.distributed import DistributedSampler

logger = logging.getLogger(__name__)
# warnings already given in this process: upstream makes a new loader every epoch, a run says it once
_warned = set()


def _warn_once(key, message, *values):
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *values)


class UniqueGroupBatchSampler:
    """A batch sampler (for ``DataLoader(batch_sampler=...)``) for one rank of ``num_replicas``.

    ``groups``: one hashable key per pair (index i of the dataset -> groups[i]).
    ``batch_size``: pairs per rank per batch, as upstream's --batch-size.
    ``loader``: what the batches are for ("training", "validation"), named in the warning given
    (once per process) when there are fewer distinct groups than a global batch.
    """

    def __init__(self, groups, batch_size, num_replicas=1, rank=0, seed=0, loader=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not within num_replicas {num_replicas}")
        if len(groups) == 0:
            raise ValueError("the dataset has no pairs")
        index = {}  # group key -> group number, in order of first appearance
        self.group_of_pair = np.fromiter(
            (index.setdefault(key, len(index)) for key in groups), dtype=np.int64, count=len(groups)
        )
        self.num_groups = len(index)
        order = np.argsort(self.group_of_pair, kind="stable")
        bounds = np.cumsum(np.bincount(self.group_of_pair, minlength=self.num_groups))[:-1]
        self.members = np.split(order, bounds)  # pair indices of each group

        self.requested_batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0  # a resumed run starts its epoch here (set by training, then reset)
        if self.num_groups >= batch_size * num_replicas:
            self.batch_size = batch_size
        else:
            self.batch_size = max(1, self.num_groups // num_replicas)
            where = f" in the {loader} loader" if loader else ""
            if rank == 0:  # every process computes the same; one says it
                _warn_once(
                    ("shrink", loader, self.num_groups, batch_size, num_replicas),
                    "Only %d distinct texts for a global batch of %d%s: batches shrink to %d per process",
                    self.num_groups, batch_size * num_replicas, where, self.batch_size,
                )
                if self.num_groups < num_replicas:
                    _warn_once(
                        ("repeat", loader, self.num_groups, num_replicas),
                        "Fewer distinct texts (%d) than processes (%d)%s: some batches repeat a text",
                        self.num_groups, num_replicas, where,
                    )
        self.global_batch_size = self.batch_size * num_replicas
        self.num_pairs = len(self.group_of_pair)
        self.num_batches = math.ceil(self.num_pairs / self.global_batch_size)
        self._cache = None  # (epoch, global batches)

    @property
    def num_samples(self):
        """Pairs per epoch over all ranks, padding included (upstream's dataloader.num_samples)."""
        return self.num_batches * self.global_batch_size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        start = self.rank * self.batch_size
        for batch in self.global_batches(self.epoch)[self.start_batch :]:
            yield batch[start : start + self.batch_size].tolist()

    def global_batches(self, epoch):
        """Every global batch of an epoch (num_batches arrays of global_batch_size pair indices)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make_batches(epoch))
        return self._cache[1]

    def _make_batches(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        num_batches, size = self.num_batches, self.global_batch_size
        # this epoch's pairs of each group, in random order; at most one per batch
        queues = [rng.permutation(m)[:num_batches] for m in self.members]
        remaining = np.array([len(q) for q in queues], dtype=np.int64)
        taken = np.zeros(self.num_groups, dtype=np.int64)
        batches = []
        for batches_left in range(num_batches, 0, -1):
            forced = np.flatnonzero(remaining == batches_left)
            optional = np.flatnonzero((remaining > 0) & (remaining < batches_left))
            wanted = min(size, len(forced) + len(optional)) - len(forced)
            if wanted > 0:
                # weighted sampling without replacement (Efraimidis-Spirakis keys)
                keys = np.log(rng.random(len(optional))) / remaining[optional]
                optional = optional[np.argpartition(-keys, wanted - 1)[:wanted]]
            else:
                optional = optional[:0]
            chosen = np.concatenate([forced, optional])
            batch = [queues[g][taken[g]] for g in chosen]
            taken[chosen] += 1
            remaining[chosen] -= 1
            if len(batch) < size:
                batch += self._padding(rng, chosen, size - len(batch))
            batches.append(rng.permutation(np.asarray(batch, dtype=np.int64)))
        return [batches[i] for i in rng.permutation(num_batches)]

    def _padding(self, rng, chosen, count):
        """``count`` random pairs, each of a different group not already in the batch if possible."""
        absent = np.setdiff1d(np.arange(self.num_groups), chosen, assume_unique=True)
        if len(absent) >= count:
            groups = rng.choice(absent, size=count, replace=False)
        else:  # fewer groups than processes: duplicates cannot be avoided
            groups = rng.choice(self.num_groups, size=count, replace=True)
        return [self.members[g][rng.integers(len(self.members[g]))] for g in groups]


class ResumableDistributedSampler(DistributedSampler):
    """Upstream's shuffled DistributedSampler that can start an epoch at batch ``start_batch``.

    The order of an epoch is the same as DistributedSampler's (seed + epoch); a run resumed from a
    step checkpoint skips the batches it already trained, without loading their pictures.
    """

    def __init__(self, dataset, batch_size, **kwargs):
        super().__init__(dataset, **kwargs)
        self.batch_size = batch_size
        self.start_batch = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_batch * self.batch_size :])


def duplicate_groups(groups, batch):
    """The groups that occur more than once in ``batch`` (a check for tests and users)."""
    counts = Counter(groups[i] for i in batch)
    return {g: n for g, n in counts.items() if n > 1}
