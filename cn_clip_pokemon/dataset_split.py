"""Reading one split of a built dataset: its pictures (LMDB, or the TSV when there is no LMDB), its
texts, and what ``dataset_info.json`` says about each picture (name, captions, source file).

``search``, ``evaluate`` and ``serve`` read splits through :class:`SplitPictures` only.
"""
import base64
import io
import json
from pathlib import Path

from cn_clip_pokemon.dataset_format import INFO_FILE
from cn_clip_pokemon.errors import UserError


class SplitPictures:
    """The pictures of one split of a built dataset, read from its LMDB (or its TSV when no LMDB).

    ``storage`` is the file the pictures are read from (``lmdb/{split}/imgs/data.mdb`` or
    ``{split}_imgs.tsv``); ``image_ids`` are sorted. Close it when done (or use it in ``with``).
    """

    def __init__(self, dataset_dir, split="test"):
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        if not self.dataset_dir.is_dir():
            raise UserError(f"dataset folder {self.dataset_dir} does not exist: build it with `cn-clip-pokemon build-dataset`")
        self.lmdb_dir = self.dataset_dir / "lmdb" / split / "imgs"
        self.tsv = self.dataset_dir / f"{split}_imgs.tsv"
        self._tsv_rows = None
        self._env = None
        if (self.lmdb_dir / "data.mdb").is_file():
            self.storage = self.lmdb_dir / "data.mdb"
            self.image_ids = self._lmdb_ids()
        elif self.tsv.is_file():
            self.storage = self.tsv
            self.image_ids = sorted(self._read_tsv())
        else:
            raise UserError(
                f"{self.dataset_dir} has no {split} split (neither lmdb/{split}/imgs nor {split}_imgs.tsv); "
                f"build it, or pick another --split"
            )
        self.info = self._read_info()
        self.texts = self._read_texts(split)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _open_env(self):
        import lmdb

        if self._env is None:
            self._env = lmdb.open(str(self.lmdb_dir), readonly=True, create=False, lock=False, readahead=False, meminit=False)
        return self._env

    def _lmdb_ids(self):
        ids = []
        with self._open_env().begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key != b"num_images":
                    ids.append(int(key.decode("utf-8")))
        return sorted(ids)

    def _read_tsv(self):
        if self._tsv_rows is None:
            rows = {}
            with open(self.tsv, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.rstrip("\n")
                    if not line:
                        continue
                    try:
                        image_id, encoded = line.split("\t")
                        rows[int(image_id)] = encoded
                    except ValueError:
                        raise UserError(f"{self.tsv} line {number} is not 'image_id<TAB>base64'") from None
            self._tsv_rows = rows
        return self._tsv_rows

    def _read_info(self):
        path = self.dataset_dir / INFO_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise UserError(f"{path} is not valid JSON ({error}); rebuild the dataset") from None

    def _read_texts(self, split):
        path = self.dataset_dir / f"{split}_texts.jsonl"
        if not path.is_file():
            return []
        texts = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        texts.append(json.loads(line))
                    except ValueError:
                        raise UserError(f"{path} line {number} is not JSON") from None
        return texts

    def _info_entry(self, image_id):
        entry = (self.info or {}).get("images", {}).get(str(image_id))
        return entry if isinstance(entry, dict) else None

    def encoded(self, image_id):
        """The stored urlsafe-base64 PNG of ``image_id``."""
        if self._tsv_rows is not None or self.storage == self.tsv:
            return self._read_tsv()[image_id]
        with self._open_env().begin() as txn:
            value = txn.get(str(image_id).encode("utf-8"))
        if value is None:
            raise UserError(f"picture {image_id} is not in {self.lmdb_dir}")
        return value.decode("utf-8", errors="ignore")

    def picture(self, image_id):
        """``image_id`` as an RGB PIL picture, opened like every picture (images.open_picture)."""
        from cn_clip_pokemon.images import open_picture

        return open_picture(io.BytesIO(base64.urlsafe_b64decode(self.encoded(image_id))))

    def pictures(self):
        for image_id in self.image_ids:
            yield self.picture(image_id)

    def label(self, image_id):
        """The Pokemon name of a picture (dataset_info.json) or its captions, else the texts paired with it."""
        entry = self._info_entry(image_id)
        if entry is not None:
            return " / ".join(entry["captions"]) if entry.get("captions") else entry.get("name")
        texts = [entry["text"] for entry in self.texts if image_id in entry.get("image_ids", [])]
        return " / ".join(texts) if texts else None

    def source(self, image_id):
        """The picture file ``image_id`` was built from, relative to the builder's --images folder
        (or as the --manifest named it), from dataset_info.json; None without that file."""
        entry = self._info_entry(image_id)
        source = entry.get("source") if entry is not None else None
        return source if isinstance(source, str) and source else None

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None
