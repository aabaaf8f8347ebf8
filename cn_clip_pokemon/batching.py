"""Upstream's DataInfo for any dataset of (image, text, eos_index) items, batched as the built-in one.

A dataset plugin's ``get_dataset`` makes its torch Dataset and returns
``unique_text_batches(dataset, groups, args, is_train, epoch_id)``; everything else training needs
comes from here, the same for the built-in ``pokemon`` dataset and a third party's:

- a DataLoader over the dataset with :class:`~cn_clip_pokemon.sampler.UniqueGroupBatchSampler`: no
  global batch (all processes together) holds two items of one group, since identical texts are
  false negatives for CLIP's loss; batches shrink when there are fewer groups than a batch;
- upstream's bookkeeping: ``dataloader.num_batches`` (per process, the same on every process) and
  ``dataloader.num_samples`` (per epoch over all processes), a sampler with ``set_epoch`` and
  ``start_batch`` (a resumed run skips the batches it trained);
- upstream's flags: ``--batch-size`` / ``--valid-batch-size``, ``--num-workers`` /
  ``--valid-num-workers``, ``--seed``; pinned memory on CUDA. Training batches are drawn anew each
  epoch, validation batches are the same every epoch.

Importing this module imports nothing heavy (torch only when called), so a plugin may import it at
its top.
"""


def unique_text_batches(dataset, groups, args, is_train, epoch_id=0):
    """Upstream's ``DataInfo(dataloader, sampler, dataset, epoch_id)`` for ``dataset``.

    ``dataset``: a torch Dataset whose item i is ``(image, text, eos_index)`` as upstream's
    LMDBDataset returns it. ``groups``: one hashable key per item (``len(groups) == len(dataset)``),
    what must not repeat in a batch: the caption, or whatever makes two captions the same answer
    (the Pokemon's number for several prompt templates of one name). ``args``, ``is_train``,
    ``epoch_id``: what upstream passes to ``get_dataset``.
    """
    import torch.distributed as dist
    from cn_clip.training.data import DataInfo
    from torch.utils.data import DataLoader

    from cn_clip_pokemon.sampler import UniqueGroupBatchSampler

    groups = list(groups)
    if len(groups) != len(dataset):
        raise ValueError(
            f"unique_text_batches: {len(groups)} group keys for a dataset of {len(dataset)} items; give one "
            "key per item (its caption, say)"
        )
    distributed = dist.is_available() and dist.is_initialized()
    sampler = UniqueGroupBatchSampler(
        groups,
        batch_size=args.batch_size if is_train else args.valid_batch_size,
        num_replicas=dist.get_world_size() if distributed else 1,
        rank=dist.get_rank() if distributed else 0,
        seed=args.seed,
        loader="training" if is_train else "validation",
    )
    # validation batches stay the same from epoch to epoch, as upstream's
    sampler.set_epoch(epoch_id if is_train else 0)
    device = getattr(args, "device", None)
    dataloader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=args.num_workers if is_train else args.valid_num_workers,
        pin_memory=getattr(device, "type", None) == "cuda",
    )
    dataloader.num_samples = sampler.num_samples
    dataloader.num_batches = len(sampler)
    return DataInfo(dataloader, sampler, dataset, epoch_id)
