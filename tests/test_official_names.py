"""The official Simplified Chinese names: the shipped table checked against npm pokemon@3.3.1, and
every other name of a Pokemon (an older translation, the Traditional Chinese, English or Japanese
name) built, classified and searched under the official one, through the real builder and commands.
"""
import json
import tarfile

import pytest
from PIL import Image, ImageDraw

from cn_clip_pokemon.cli import main
from cn_clip_pokemon.pokedex import OFFICIAL_NAMES_FILE, Pokedex, lookup_name, read_official_names, to_simplified

from conftest import POKEMON_TGZ, random_checkpoint

# Every name of npm pokemon@3.3.1's zh-hans list that is not the official one: "number old official".
# (#707 钥圈兒, #728 球球海獅 and #801 瑪機雅娜 only had a traditional character by mistake.)
CHANGED = """
    57 火爆猴 火暴猴, 154 大菊花 大竺葵, 167 线球 圆丝蛛, 180 绵绵 茸茸羊,
    189 毽子绵 毽子棉, 193 阳阳玛 蜻蜻蜓, 196 太阳精灵 太阳伊布, 197 月精灵 月亮伊布,
    199 河马王 呆呆王, 209 布卢 布鲁, 210 布卢皇 布鲁皇, 233 3D龙II 多边兽２型,
    236 巴尔郎 无畏小子, 237 柯波朗 战舞郎, 240 小鸭嘴龙 鸭嘴宝宝, 246 由基拉 幼基拉斯,
    247 沙基拉 沙基拉斯, 248 班吉拉 班基拉斯, 251 雪拉比 时拉比, 266 甲壳蛹 甲壳茧,
    269 毒粉蝶 毒粉蛾, 287 懒人翁 懒人獭, 297 超力王 铁掌力士, 331 沙漠奈亚 刺球仙人掌,
    332 梦歌奈亚 梦歌仙人掌, 349 笨笨鱼 丑丑鱼, 351 漂浮泡泡 飘浮泡泡, 355 夜骷颅 夜巡灵,
    356 夜巨人 彷徨夜灵, 416 蜂后 蜂女王, 418 泳气鼬 泳圈鼬, 422 无壳海牛 无壳海兔,
    423 海牛兽 海兔兽, 426 附和气球 随风球, 438 爱哭树 盆才怪, 440 好运蛋 小福蛋,
    449 怪河马 沙河马, 451 紫天蝎 钳尾蝎, 456 萤光鱼 荧光鱼, 464 超铁暴龙 超甲狂犀,
    467 鸭嘴焰龙 鸭嘴炎兽, 469 梅卡阳玛 远古巨蜓, 470 叶精灵 叶伊布, 471 冰精灵 冰伊布,
    474 3D龙Z 多边兽乙型, 477 夜黑魔人 黑夜魔灵, 484 帕路奇犽 帕路奇亚, 520 波波鸽 咕咕鸽,
    521 轰隆雉鸡 高傲雉鸡, 534 修缮老头 修建老匠, 538 投射鬼 投摔鬼, 542 保母虫 保姆虫,
    550 勇士鲈鱼 野蛮鲈鱼, 556 街头沙铃 沙铃仙人掌, 559 滑头小子 滑滑小子, 563 死神棺 迭失棺,
    581 首席天鹅 舞天鹅, 586 芽吹鹿 萌芽鹿, 590 宝贝球菇 哎呀球菇, 591 暴露菇 败露球菇,
    594 保母曼波 保姆曼波, 626 爆爆头水牛 爆炸头水牛, 628 勇士鹰 勇士雄鹰, 629 秃鹰小子 秃鹰丫头,
    631 食蚁炉 熔蚁兽, 634 双头龙 双首暴龙, 635 三头龙 三首恶龙, 637 火神虫 火神蛾,
    643 雷希拉姆 莱希拉姆, 660 攉土兔 掘地兔, 663 烈箭鹟 烈箭鹰, 664 粉蛹 粉蝶虫,
    666 碧粉蝶 彩粉蝶, 672 咩咩羊 坐骑小羊, 675 流氓熊猫 霸道熊猫, 686 豪喇花枝 好啦鱿,
    691 毒拉蜜妮 毒藻龙, 695 电伞查特 光电伞蜥, 700 仙子精灵 仙子伊布, 701 战斗飞鸟 摔角鹰人,
    705 黏美伊儿 黏美儿, 707 钥圈兒 钥圈儿, 728 球球海獅 球球海狮, 778 谜拟Ｑ 谜拟丘,
    801 瑪機雅娜 玛机雅娜,
"""
CHANGES = {int(number): (old, new) for number, old, new in (item.split() for item in CHANGED.replace("\n", " ").split(",") if item.strip())}

# Pictures named with every kind of name a Pokemon has, and the caption they must be built under:
# number -> (official, [older npm zh-hans, npm zh-hant, official zh-hant, English, Japanese]).
NAMED = {
    196: ("太阳伊布", ["太阳精灵", "太陽精靈", "太陽伊布", "Espeon", "エーフィ"]),
    197: ("月亮伊布", ["月精灵", "月精靈", "月亮伊布", "Umbreon", "ブラッキー"]),
    484: ("帕路奇亚", ["帕路奇犽", "帕路奇犽", "帕路奇亞", "Palkia", "パルキア"]),
    635: ("三首恶龙", ["三头龙", "三頭龍", "三首惡龍", "Hydreigon", "サザンドラ"]),
    643: ("莱希拉姆", ["雷希拉姆", "雷希拉姆", "萊希拉姆", "Reshiram", "レシラム"]),
    733: ("铳嘴大鸟", ["铳嘴大鸟", "銃嘴大鳥", "銃嘴大鳥", "Toucannon", "ドデカバシ"]),
}


def npm_names(shared_datasets, language):
    with tarfile.open(shared_datasets / POKEMON_TGZ) as archive:
        return dict(enumerate(json.load(archive.extractfile(f"package/data/{language}.json")), 1))


@pytest.fixture(scope="module")
def pokedex():
    return Pokedex.load()


@pytest.fixture(scope="module")
def table():
    """The shipped table's rows as written, number -> entry (not through the Pokedex)."""
    return {entry["number"]: entry for entry in read_official_names(OFFICIAL_NAMES_FILE)}


def test_every_name_that_differs_from_npm_pokemon_is_the_official_one(shared_datasets, table, pokedex):
    hans = npm_names(shared_datasets, "zh-hans")
    assert sorted(hans) == sorted(table) == list(range(1, 1026))
    # the table's rows for exactly these numbers differ from the npm package, and say the official name
    assert {number for number in table if table[number]["zh_hans"] != hans[number]} == set(CHANGES)
    for number, (old, new) in CHANGES.items():
        assert (hans[number], table[number]["zh_hans"], pokedex.name(number)) == (old, new, new)
    assert len(CHANGES) == 85 and sum(number <= 649 for number in CHANGES) == 69
    # names a user sees change (npm's own traditional slips aside): 82 of 1025, 69 of #1-649
    renamed = [number for number, (old, new) in CHANGES.items() if to_simplified(old) != new]
    assert len(renamed) == 82 and sum(number <= 649 for number in renamed) == 69


def test_the_npm_names_are_aliases_of_the_same_number(shared_datasets, pokedex):
    for language in ("zh-hans", "zh-hant"):
        for number, name in npm_names(shared_datasets, language).items():
            assert pokedex.number(name) == number, (language, number, name)
            assert lookup_name(name) == (pokedex.name(number), number)
    # the copy of those names the package ships is the npm package's own
    shipped = json.loads((OFFICIAL_NAMES_FILE.parent / "npm-pokemon-names.json").read_text(encoding="utf-8"))["pokemon"]
    hans, hant = npm_names(shared_datasets, "zh-hans"), npm_names(shared_datasets, "zh-hant")
    assert [(e["number"], e["zh_hans"], e["zh_hant"]) for e in shipped] == [(n, hans[n], hant[n]) for n in sorted(hans)]


def test_the_table_says_where_it_comes_from(table, pokedex):
    header = [line for line in OFFICIAL_NAMES_FILE.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    text = "\n".join(header)
    for fact in ("https://github.com/PokeAPI/pokeapi", "data/v2/csv/pokemon_species_names.csv",
                 "bbef3d99ddfa8277f726414c89b471267aef8a8e", "official-names-LICENSE.md", "BSD 3-clause", "t2s"):
        assert fact in text
    licence = (OFFICIAL_NAMES_FILE.parent / "official-names-LICENSE.md").read_text(encoding="utf-8")
    assert "Paul Hallett and PokéAPI contributors" in licence and "Redistribution and use" in licence
    # one official name per language for every Pokemon; the simplified ones unique and simplified
    names = [table[number]["zh_hans"] for number in range(1, 1026)]
    assert len(set(names)) == 1025 and all(to_simplified(name) == name for name in names)
    assert all(len(table[number]["aliases"]) == 2 and table[number]["zh_hant"] for number in table)  # en, ja
    assert (table[25]["zh_hans"], table[25]["zh_hant"], *table[25]["aliases"]) == ("皮卡丘", "皮卡丘", "Pikachu", "ピカチュウ")


def test_every_official_name_in_any_language_finds_its_number(table, pokedex):
    for number, entry in table.items():
        for name in (entry["zh_hans"], entry["zh_hant"], *entry["aliases"]):
            assert pokedex.number(name) == number, (number, name)
            assert pokedex.number(name.upper()) == number  # English in any case
    for number, (official, aliases) in NAMED.items():
        assert pokedex.name(number) == official
        assert all(lookup_name(alias) == (official, number) for alias in aliases)
    assert lookup_name("一只黄色的老鼠") == ("一只黄色的老鼠", None)  # a description is left as it is
    assert lookup_name("Farfetch'd") == lookup_name("farfetch’d") == ("大葱鸭", 83)
    assert lookup_name("Flabebe") == ("花蓓蓓", 669)


# --------------------------------------------------------------------------- through the builder


def disc(path, colour, size):
    picture = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    ImageDraw.Draw(picture).ellipse((24 - size, 24 - size, 24 + size, 24 + size), fill=colour + (255,))
    picture.save(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A dataset built by `build-dataset` from pictures named with each Pokemon's other names:
    flat files with and without a number and a view, and one folder per Pokemon named by its
    English name."""
    root = tmp_path_factory.mktemp("official-names")
    pictures = root / "pictures"
    pictures.mkdir()
    expected = {}
    for index, (number, (official, aliases)) in enumerate(NAMED.items()):
        colour = (40 * index + 20, 200 - 30 * index, 90)
        names = {f"{number:04d}{aliases[0]}": "", f"{aliases[1]}_back": "back", f"{number}-{aliases[2]}": "",
                 f"{aliases[4]} (2)": "2"}
        for size, (name, view) in enumerate(names.items(), 8):
            disc(pictures / f"{name}.png", colour, size)
            expected[f"{name}.png"] = (official, number, view)
        folder = pictures / aliases[3]
        folder.mkdir()
        for size, view in enumerate(["front_00", "front_01"], 16):
            disc(folder / f"{view}.png", colour, size)
            expected[f"{aliases[3]}/{view}.png"] = (official, number, view)
    return root, expected


def test_pictures_named_with_any_name_build_under_the_official_caption(built, capsys):
    root, expected = built
    assert main(["build-dataset", "--images", str(root / "pictures"), "--out", str(root / "dataset"), "--image-size", "32",
                 "--split-by", "view", "--test-fraction", "0.3", "--workers", "1"]) == 0
    printed = capsys.readouterr()
    info = json.loads((root / "dataset" / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["names"] == [official for official, _ in NAMED.values()]
    built_as = {entry["source"]: (entry["name"], entry["number"], entry["view"]) for entry in info["images"].values()}
    assert built_as == expected and info["counts"]["skipped"] == 0
    # the captions upstream trains on are the official names
    captions = set()
    for split in ("train", "valid", "test"):
        with open(root / "dataset" / f"{split}_texts.jsonl", encoding="utf-8") as file:
            captions.update(json.loads(line)["text"] for line in file)
    assert captions == {official for official, _ in NAMED.values()}
    # the [UNK] note names the official names: 铳嘴大鸟 has a character BERT lacks, 帕路奇亚 has none
    # (npm's 帕路奇犽 had one)
    note = next(line for line in (printed.out + printed.err).splitlines() if "[UNK]" in line)
    assert "铳嘴大鸟" in note and "帕路奇" not in note


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "epoch_latest.pt")


def test_classify_search_and_the_page_take_any_name_and_answer_officially(built, tiny_checkpoint, capsys):
    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.classify import candidate_names
    from cn_clip_pokemon.serve import PokedexService

    root, _ = built
    dataset = root / "dataset-for-search"
    build_dataset(root / "pictures", dataset, image_size=32, split_by="view", test_fraction=0.3, workers=1, progress=False)
    picture = root / "pictures" / "0196太阳精灵.png"
    capsys.readouterr()
    assert main(["classify", str(picture), "--checkpoint", str(tiny_checkpoint), "--names", "Espeon", "月精靈", "ブラッキー",
                 "三頭龍,雷希拉姆", "--json", "--device", "cpu", "--no-cache"]) == 0
    report = json.loads(capsys.readouterr().out)
    predictions = {(p["name"], p["number"]) for p in report["results"][0]["predictions"]}
    assert predictions == {("太阳伊布", 196), ("月亮伊布", 197), ("三首恶龙", 635), ("莱希拉姆", 643)}

    assert main(["search", "Umbreon", "--checkpoint", str(tiny_checkpoint), "--dataset", str(root / "dataset"),
                 "--split", "train", "--json", "--device", "cpu", "--no-cache"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["query"], found["number"]) == ("月亮伊布", 197)
    official = {number: name for number, (name, _) in NAMED.items()}
    assert found["results"] and all(official[r["number"]] == r["name"] for r in found["results"])

    # the page's candidates come from --names through candidate_names, as for classify
    service = PokedexService(tiny_checkpoint, dataset=dataset, split="train", device="cpu", progress=False, cache=False,
                             names=candidate_names(["Palkia", "雷希拉姆", "三首恶龙"]))
    try:
        answer = service.search_text("パルキア")
        assert (answer["query"], answer["number"]) == ("帕路奇亚", 484)
        assert {(p["name"], p["number"]) for p in service.classify_upload(picture)} == {
            ("帕路奇亚", 484), ("莱希拉姆", 643), ("三首恶龙", 635)}
    finally:
        service.close()
