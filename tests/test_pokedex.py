"""Pokedex names, picture-name parsing, the tokenizer check and the `t2s` command."""
import json

import pytest

from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.pokedex import Pokedex, to_simplified


@pytest.fixture(scope="module")
def pokedex():
    return Pokedex.load()


def test_every_name_is_simplified_and_in_number_order(pokedex):
    names = pokedex.names()
    assert len(names) == 1025 and len(set(names)) == 1025
    assert names[0] == "妙蛙种子" and names[24] == "皮卡丘" and pokedex.name(25) == "皮卡丘"
    assert all(to_simplified(name) == name for name in names)
    # npm pokemon@3.3.1 wrote #707 with a traditional 兒 (钥圈兒); the Pokedex hands out 钥圈儿.
    assert pokedex.name(707) == "钥圈儿" and pokedex.number("钥圈兒") == 707
    assert [pokedex.number(name) for name in names] == list(range(1, 1026))


def test_numbers_from_simplified_and_traditional_names(pokedex):
    assert pokedex.number("皮卡丘") == 25
    assert pokedex.number("小火龍") == 4
    assert pokedex.number("噴火龍") == 6
    assert pokedex.number("谜拟Q") == 778  # npm pokemon@3.3.1 wrote a full-width Ｑ; officially 谜拟丘
    assert pokedex.number("多边兽2型") == 233  # the official name writes a full-width ２
    assert pokedex.number("卡璞哞哞") == pokedex.number("卡璞·哞哞") == 787  # officially 卡璞・哞哞
    assert pokedex.number("not a pokemon") is None
    with pytest.raises(KeyError, match="1026"):
        pokedex.name(1026)


def test_to_simplified():
    assert to_simplified("臺灣的寶可夢") == "台湾的宝可梦"
    assert to_simplified("pikachu 025") == "pikachu 025"


@pytest.mark.parametrize(
    "file_name, expected",
    [
        ("0001妙蛙种子.png", (1, "妙蛙种子", "")),
        ("1妙蛙种子.png", (1, "妙蛙种子", "")),
        ("0025-皮卡丘.jpg", (25, "皮卡丘", "")),
        ("025_皮卡丘.webp", (25, "皮卡丘", "")),
        ("皮卡丘.png", (25, "皮卡丘", "")),
        ("0004小火龍.png", (4, "小火龙", "")),
        ("0025.png", (25, "皮卡丘", "")),
        ("0025皮卡丘_2.png", (25, "皮卡丘", "2")),
        ("皮卡丘 (3).jpg", (25, "皮卡丘", "3")),
        ("0025_back.png", (25, "皮卡丘", "back")),
        ("02333D龙II.png", (233, "多边兽２型", "")),  # the number runs into an old name starting with a digit
        ("0233多边兽2型_2.png", (233, "多边兽２型", "2")),
        ("Mr. Mime_back.png", (122, "魔墙人偶", "back")),  # the longest name before a separator
        ("0250-Ho-Oh-shiny.png", (250, "凤王", "shiny")),
        ("ピカチュウ.png", (25, "皮卡丘", "")),
        ("月精灵 (2).png", (197, "月亮伊布", "2")),
    ],
)
def test_picture_names_people_write(pokedex, file_name, expected):
    assert pokedex.parse_picture_name(file_name) == expected


@pytest.mark.parametrize(
    "file_name, message",
    [
        ("0004妙蛙种子.png", r"#4 小火龙.*妙蛙种子.*#1"),  # both readings named
        ("2000皮卡丘.png", "2000 is not in the Pokedex"),
        ("pikachoo.png", "no Pokemon number or known name"),
        ("0025皮卡丘丘.png", "no Pokemon name"),
    ],
)
def test_picture_names_that_are_wrong(pokedex, file_name, message):
    with pytest.raises(ValueError, match=message):
        pokedex.parse_picture_name(file_name)


def test_tokenizer_report_finds_unknown_characters(pokedex):
    report = pokedex.tokenizer_report()
    assert report["unknown"]["狃拉"] == ["[UNK]", "拉"]
    assert "[UNK]" in report["unknown"]["铳嘴大鸟"]
    assert "帕路奇亚" not in report["unknown"]  # npm pokemon@3.3.1's 帕路奇犽 had one
    assert "皮卡丘" not in report["unknown"]
    assert report["identical"] == []  # every shipped name can be told apart


def test_tokenizer_report_finds_names_that_tokenize_identically():
    entries = [{"number": 1, "zh_hans": "狃拉", "zh_hant": ""}, {"number": 2, "zh_hans": "犽拉", "zh_hant": ""},
               {"number": 3, "zh_hans": "皮卡丘", "zh_hant": ""}]
    report = Pokedex(entries).tokenizer_report(templates=["一张{}的图片"])
    assert report["identical"] == [["狃拉", "犽拉"]]


def test_tokenizer_is_upstreams(pokedex):
    from cn_clip.clip import _tokenizer

    from cn_clip_pokemon.pokedex import cn_clip_tokenizer

    ours = cn_clip_tokenizer()
    for name in pokedex.names()[::7]:
        assert ours.tokenize(name.lower()) == _tokenizer.tokenize(name.lower())


# ---------------------------------------------------------------- t2s


def make_folder(root):
    (root / "0004小火龍").mkdir(parents=True)
    (root / "0004小火龍" / "正面.png").write_bytes(b"x")
    (root / "0006噴火龍.png").write_bytes(b"y")
    (root / "0025皮卡丘.png").write_bytes(b"z")
    return root


def tree(root):
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


def test_t2s_folder_copy_leaves_the_input_alone(tmp_path, capsys):
    source = make_folder(tmp_path / "imgs")
    before = tree(source)
    assert cli_main(["t2s", str(source)]) == 0
    assert tree(source) == before
    copy = tmp_path / "imgs_simplified"
    assert tree(copy) == ["0004小火龙", "0004小火龙/正面.png", "0006喷火龙.png", "0025皮卡丘.png"]
    assert (copy / "0006喷火龙.png").read_bytes() == b"y"
    out = capsys.readouterr().out
    assert "0006噴火龍.png -> 0006喷火龙.png" in out and "2 name(s) changed" in out


@pytest.mark.parametrize("mode", [0o700, 0o750])
def test_t2s_folder_copy_has_the_input_folders_permissions(tmp_path, mode):
    source = make_folder(tmp_path / "imgs")
    source.chmod(mode)  # a private folder's copy stays private, whatever the umask
    assert cli_main(["t2s", str(source), "--out", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy").stat().st_mode & 0o777 == mode
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["copy", "imgs"]  # no temporary folder left


def test_t2s_folder_in_place(tmp_path, capsys):
    source = make_folder(tmp_path / "imgs")
    assert cli_main(["t2s", str(source), "--in-place"]) == 0
    assert tree(source) == ["0004小火龙", "0004小火龙/正面.png", "0006喷火龙.png", "0025皮卡丘.png"]


def test_t2s_refuses_two_names_becoming_one(tmp_path, capsys):
    source = tmp_path / "imgs"
    source.mkdir()
    (source / "噴火龍.png").write_bytes(b"a")
    (source / "喷火龙.png").write_bytes(b"b")
    assert cli_main(["t2s", str(source), "--in-place"]) == 1
    assert "喷火龙.png" in capsys.readouterr().err
    assert tree(source) == sorted(["噴火龍.png", "喷火龙.png"])


def test_t2s_jsonl_and_tsv_files(tmp_path, capsys):
    jsonl = tmp_path / "train_texts.jsonl"
    jsonl.write_text(
        json.dumps({"text_id": 0, "text": "噴火龍", "image_ids": [1]}) + "\n"  # escaped \\u form
        + json.dumps({"text_id": 1, "text": "皮卡丘", "image_ids": [2]}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    assert cli_main(["t2s", str(jsonl), "--out", str(tmp_path / "out.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["text"] for line in lines] == ["喷火龙", "皮卡丘"] and lines[0]["image_ids"] == [1]
    assert "1 line(s) changed" in capsys.readouterr().out
    assert "噴火龍" in jsonl.read_text(encoding="utf-8").encode().decode("unicode_escape")  # input untouched

    tsv = tmp_path / "names.tsv"
    tsv.write_text("4\t小火龍\n25\t皮卡丘\n", encoding="utf-8")
    assert cli_main(["t2s", str(tsv), "--in-place"]) == 0
    assert tsv.read_text(encoding="utf-8") == "4\t小火龙\n25\t皮卡丘\n"


def test_t2s_will_not_overwrite_an_existing_copy(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("小火龍", encoding="utf-8")
    (tmp_path / "a_simplified.txt").write_text("keep", encoding="utf-8")
    assert cli_main(["t2s", str(text)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "a_simplified.txt").read_text(encoding="utf-8") == "keep"
