"""What a build writes, exactly upstream's format (``cn_clip/preprocess``,
``cn_clip.training.data.LMDBDataset``): ``{split}_imgs.tsv`` (image_id TAB urlsafe-base64 PNG) and
``lmdb/{split}/imgs`` as the pictures come, then ``{split}_texts.jsonl`` ({"text_id", "text",
"image_ids"}) and ``lmdb/{split}/pairs``. Memory stays flat however many pictures there are."""
import json
import os
import pickle
import tempfile

from cn_clip_pokemon.builder.process import NoClock
from cn_clip_pokemon.dataset_format import SPLITS, fill_template, images_tsv, lmdb_dir, lmdb_images, lmdb_pairs, texts_jsonl

INITIAL_MAP_SIZE = 32 << 20
GROUP_MEMORY = 64 << 20  # one Pokemon's encoded pictures held in memory before spilling to disk
TSV_BUFFER = 1 << 20
IMAGES_FRAGMENT = "images.json.part"  # each picture's dataset_info entry, in the temporary folder only


def lmdb_map_size(value_sizes, key_size=16):
    """Room for these small values: LMDB stores them inline in leaf pages (counted here as if
    those were only half full)."""
    return max(1 << 20, 2 * sum(size + key_size + 16 for size in value_sizes) + (4 << 20))


class LmdbWriter:
    """Puts in batches; grows the map and retries if our size estimate ever falls short."""

    def __init__(self, path, map_size, batch_bytes=4 << 20, reopen_bytes=16 << 20):
        import lmdb

        self._lmdb = lmdb
        self.path = str(path)
        self.env = self._open(map_size)
        # A write transaction holds its dirty pages in memory: commit every few MiB, not every
        # N items, so memory does not depend on the picture size.
        self.batch_bytes = batch_bytes
        self.pending = []
        self.pending_bytes = 0
        # LMDB touches part of each value's pages through its memory map, and those pages stay
        # resident in this process; reopening now and then lets them go, so memory stays flat.
        self.reopen_bytes = reopen_bytes
        self.written_since_open = 0

    def _open(self, map_size):
        # bytes: a folder name that is not UTF-8 (through a symlinked --out) still opens
        return self._lmdb.open(os.fsencode(self.path), map_size=map_size, subdir=True, lock=False, sync=False)

    def put(self, key, value):
        self.pending.append((key, value))
        self.pending_bytes += len(key) + len(value)
        if self.pending_bytes >= self.batch_bytes:
            self.flush()

    def flush(self):
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                self.written_since_open += self.pending_bytes
                self.pending = []
                self.pending_bytes = 0
            except self._lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
        if self.written_since_open >= self.reopen_bytes:
            map_size = self.env.info()["map_size"]
            self.env.sync(True)
            self.env.close()
            self.env = self._open(map_size)
            self.written_since_open = 0

    def close(self):
        self.flush()
        self.env.sync(True)
        self.env.close()


class ImageWriter:
    """Writes kept pictures to ``{split}_imgs.tsv`` and ``lmdb/{split}/imgs`` as they come.

    Pictures arrive grouped by Pokemon; a group is held (in memory up to ``GROUP_MEMORY``, then in a
    temporary file) until its last picture is in, then ``deal(group)`` gives each picture's split.
    The TSV files write through a buffer of TSV_BUFFER bytes: one system call for dozens of pictures.
    Image ids run 0..N-1 over all splits. Each picture's dataset_info entry goes to a side file.
    """

    def __init__(self, folder, deal, clock=None):
        self.deal = deal
        self.clock = clock or NoClock()
        self.writers, self.tsv_files = {}, {}
        for split in SPLITS:
            lmdb_dir(folder, split).mkdir(parents=True)
            # The map starts small and doubles when full, so it ends within 2x of the data.
            self.writers[split] = LmdbWriter(lmdb_images(lmdb_dir(folder, split)), INITIAL_MAP_SIZE)
            self.tsv_files[split] = open(images_tsv(folder, split), "wb", buffering=TSV_BUFFER)
        self.fragment_path = folder / IMAGES_FRAGMENT
        self.fragment = open(self.fragment_path, "w", encoding="utf-8", errors="backslashreplace")
        self.folder = folder
        self.split_images = {split: {} for split in SPLITS}  # split -> number -> [image ids]
        self.names = {}  # number -> name, of the Pokemon with a kept picture
        self.captions = {}  # number -> {caption: None}, in first-seen order (a Pokemon: its name)
        self.caption_images = {split: {} for split in SPLITS}  # split -> (number, caption) -> [image ids]
        self.count = 0
        self._new_group()

    def _new_group(self):
        # the group being read: its pictures, their encoded texts while they fit in GROUP_MEMORY
        # (held), then all of them in a temporary file, one a line (spool)
        self.group, self.held, self.held_bytes, self.spool = [], [], 0, None

    def add(self, picture, encoded):
        if self.group and picture.number != self.group[0].number:
            self._write_group()
        self.group.append(picture)
        if self.spool is not None:
            self.spool.write(encoded + b"\n")
        else:
            self.held.append(encoded)
            self.held_bytes += len(encoded)
            if self.held_bytes > GROUP_MEMORY:  # a group too large to hold: on disk from here on
                self.spool = tempfile.TemporaryFile(dir=self.folder)
                self.spool.writelines(line + b"\n" for line in self.held)
                self.held, self.held_bytes = [], 0
        self.clock.lap("spool")

    def _held_lines(self):
        """The group's encoded texts, in order, without line ends."""
        if self.spool is None:
            yield from self.held
            return
        self.spool.seek(0)
        for line in self.spool:
            yield line[:-1]

    def _write_group(self):
        clock = self.clock
        splits = self.deal(self.group)
        clock.lap("spool")
        for picture, split, encoded in zip(self.group, splits, self._held_lines()):
            key = str(self.count).encode("ascii")
            clock.lap("spool")
            self.tsv_files[split].write(b"".join((key, b"\t", encoded, b"\n")))  # one copy of the text
            clock.lap("TSV write")
            self.writers[split].put(key, encoded)
            clock.lap("LMDB write")
            self.split_images[split].setdefault(picture.number, []).append(self.count)
            self.names[picture.number] = picture.name
            known = self.captions.setdefault(picture.number, {})
            for caption in picture.captions or (picture.name,):
                known[caption] = None
                self.caption_images[split].setdefault((picture.number, caption), []).append(self.count)
            entry = {"split": split, "number": picture.number, "name": picture.name,
                     "source": picture.relative, "view": picture.view}
            if picture.captions:
                entry["captions"] = list(picture.captions)
            self.fragment.write(("" if self.count == 0 else ",\n") + f'  "{self.count}": '
                                + json.dumps(entry, ensure_ascii=False))
            self.count += 1
            clock.lap("info")
        if self.spool is not None:
            self.spool.close()
        self._new_group()
        clock.lap("spool")

    def finish(self):
        """Write the last Pokemon's pictures and each split's image count."""
        if self.group:
            self._write_group()
        for split in SPLITS:
            count = sum(len(ids) for ids in self.split_images[split].values())
            self.writers[split].put(b"num_images", str(count).encode("utf-8"))

    def close(self):
        for split in SPLITS:
            self.writers[split].close()
            self.clock.lap("LMDB write")
            self.tsv_files[split].close()
            self.clock.lap("TSV write")
        self.fragment.close()
        if self.spool is not None:
            self.spool.close()


def captions_by_group(images):
    """``{number: [captions]}`` of the groups (Pokemon) with a kept picture, by number; each list in
    first-seen order (a Pokemon: its name)."""
    return {number: list(images.captions[number]) for number in sorted(images.names)}


def write_texts_and_pairs(folder, images, captions_of, templates):
    """Each split's ``{split}_texts.jsonl`` and ``lmdb/{split}/pairs`` for the pictures ``images``
    (a finished ImageWriter) wrote; returns ``{split: {"images", "pairs", "texts"}}``.

    One text per (name or caption, template); text ids are shared by all splits."""
    split_images = images.split_images
    caption_images = images.caption_images
    numbers_in_order = list(captions_of)
    text_ids = {}
    for number in numbers_in_order:
        for caption in captions_of[number]:
            for template in templates:
                text_ids.setdefault(fill_template(template, caption), len(text_ids))
    longest_text = max(len(text.encode("utf-8")) for text in text_ids)
    split_counts = {}
    for split in SPLITS:
        images_in_split = sum(len(ids) for ids in split_images[split].values())
        pair_count = sum(len(ids) for ids in caption_images[split].values()) * len(templates)
        # Pairs in the order upstream's build_lmdb_dataset.py writes them from the JSONL.
        writer = LmdbWriter(
            lmdb_pairs(lmdb_dir(folder, split)), lmdb_map_size([64 + longest_text] * pair_count)
        )
        position = texts = 0
        with open(texts_jsonl(folder, split), "w", encoding="utf-8") as jsonl:
            for number in numbers_in_order:
                for caption in captions_of[number]:
                    image_ids = caption_images[split].get((number, caption))
                    if not image_ids:
                        continue
                    for template in templates:
                        text = fill_template(template, caption)
                        record = {"text_id": text_ids[text], "text": text, "image_ids": image_ids}
                        jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
                        texts += 1
                        for image_id in image_ids:
                            writer.put(str(position).encode("utf-8"), pickle.dumps((image_id, text_ids[text], text)))
                            position += 1
        writer.put(b"num_samples", str(position).encode("utf-8"))
        writer.close()
        split_counts[split] = {
            "images": images_in_split,
            "pairs": position,
            "texts": texts,
        }
    return split_counts
