"""The dataset layout dataset_format names is the one build-dataset writes and the readers find, and
every --split takes only the dataset's splits (one usage line before anything is loaded)."""
import pytest

from cn_clip_pokemon import dataset_format as layout
from cn_clip_pokemon.errors import UserError


def test_build_dataset_writes_the_layout_dataset_format_names(sprite_dataset):
    written = {path.name for path in sprite_dataset.iterdir()}
    named = {layout.info_path(sprite_dataset).name, layout.LMDB_FOLDER}
    for split in layout.SPLITS:
        named |= {layout.images_tsv(sprite_dataset, split).name, layout.texts_jsonl(sprite_dataset, split).name}
        split_dir = layout.lmdb_dir(sprite_dataset, split)
        assert sorted(path.name for path in split_dir.iterdir()) == sorted(layout.LMDB_DATABASES)
        assert (layout.lmdb_images(split_dir) / "data.mdb").is_file()
        assert (layout.lmdb_pairs(split_dir) / "data.mdb").is_file()
        assert layout.dataset_of_split(split_dir) == sprite_dataset.resolve()
        assert layout.info_path_of_split(split_dir) == layout.info_path(sprite_dataset).resolve()
    assert written == named
    assert layout.load_dataset_info(sprite_dataset)["image_size"] == 64


def test_a_folder_without_the_info_file_is_not_a_built_dataset(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path} has no {layout.INFO_FILE}: build it with `cn-clip-pokemon build-dataset`"):
        layout.load_dataset_info(tmp_path)


@pytest.mark.parametrize("command", ["evaluate", "search", "serve", "export-hf"])
def test_every_split_option_takes_only_the_dataset_splits(command, tmp_path, capsys):
    from cn_clip_pokemon.cli import main

    argv = [command, "--split", "tset", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset", str(tmp_path)]
    assert main(argv + (["--out", str(tmp_path / "hf")] if command == "export-hf" else [])) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cn-clip-pokemon: error: argument --split: invalid choice: 'tset'"), lines
    assert all(split in lines[0] for split in layout.SPLITS) and lines[0].endswith(f"(see `cn-clip-pokemon {command} --help`)")
    assert not (tmp_path / "hf").exists()
