"""Hardening of the file sources: styles.csv parsed per RFC 4180 (checked against Python's csv module),
symlinked class folders followed with loop protection, and one-line messages that name the real problem.
Tiny data only (12x12 images): fast."""

import csv
import io
import os

import pytest

from configs import common
from conftest import SHARED_DATA, write_image
from navee_jax.data.sources import folder_catalogue, read_styles_csv, styles_catalogue
from navee_jax.data.splits import make_split
from navee_jax.errors import UserError

FASHION = os.path.join(SHARED_DATA, "fashion_product_images")
HEADER10 = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
HEADER9 = HEADER10.rsplit(",", 1)[0]


def _styles_root(tmp_path, lines: list[str], ids, encoding: str = "utf-8"):
    root = tmp_path / "styles"
    (root / "images").mkdir(parents=True)
    (root / "styles.csv").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    for i in ids:
        write_image(str(root / "images" / f"{i}.jpg"), seed=i)
    return root


def _labels(cat) -> dict[str, str]:
    return {os.path.basename(p)[:-4]: cat.class_names[c] for p, c in zip(cat.paths, cat.labels)}


QUOTED = [HEADER10,
          '1,Men,Apparel,Topwear,"T-shirts, wear",Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt',
          '2,Women,Apparel,Topwear,Tops,Red,Fall,2011,Casual,"Nike Women\'s EM Tempo 3.5"" Pink Short"',
          '3,Men,"Foot,wear",Shoes,Casual Shoes,White,Summer,2012,Casual,"Puma, Men White Shoes"',
          '4,Men,Apparel,Topwear,Tshirts,Blue,Fall,2011,Casual,Men Blue T-shirt, Slim',  # Kaggle: unquoted commas
          '5,Men,Footwear',  # too few fields
          '6,Men,Apparel,Topwear,"Shirts, Formal",Blue,Fall,2011,Casual,Blue, Slim',  # quoted, and 11 fields
          '7,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Plain shirt',
          # Kaggle again: a quote inside an unquoted field is a character, not quoting (RFC 4180 quotes whole fields)
          '8,Women,Apparel,Bottomwear,Shorts,Pink,Summer,2012,Sports,Nike Women\'s EM Tempo 3.5" Pink, Short']


def test_quoted_fields_parse_like_the_csv_module_and_bad_rows_are_listed_by_line(tmp_path):
    root = _styles_root(tmp_path, QUOTED, ids=range(1, 9))
    cat = styles_catalogue(str(root), label_column="articleType", group_column="masterCategory")
    # The reference: Python's csv module, on the rows that have exactly the header's fields ...
    rows = list(csv.DictReader(io.StringIO("\n".join(QUOTED))))
    want = {r["id"]: r["articleType"] for r in rows if None not in r and None not in r.values()}
    want["4"], want["8"] = "Tshirts", "Shorts"  # ... plus the Kaggle rows: unquoted commas in the last column
    assert _labels(cat) == want
    assert set(cat.class_names) == {"T-shirts, wear", "Tops", "Casual Shoes", "Tshirts", "Shirts", "Shorts"}
    assert sorted(set(cat.groups)) == ["Apparel", "Foot,wear"]
    csv_path = str(root / "styles.csv")
    reasons = {s.path: s.reason for s in cat.skipped}
    assert reasons == {f"{csv_path}:6": "malformed row: 3 fields, header has 10",
                       f"{csv_path}:7": "malformed row: 11 fields, header has 10 (a row with quoted fields must "
                                        "quote a last field that holds commas)"}
    assert cat.skip_report()[0] == "data: skipped 2 file(s)/folder(s) (2 malformed row):"


def test_reader_rows_equal_the_csv_module_and_the_last_column_join_is_the_old_split(tmp_path):
    text = "\n".join(QUOTED) + "\n"
    (tmp_path / "styles.csv").write_text(text)
    header, rows, malformed = read_styles_csv(str(tmp_path / "styles.csv"))
    ref = list(csv.reader(io.StringIO(text)))
    assert header == ref[0]
    kaggle = {line[0]: line.split(",", 9) for line in (QUOTED[4], QUOTED[8])}  # the old reader's split
    assert rows == [kaggle.get(r[0], r) for r in ref[1:] if len(r) == 10 or r[0] in kaggle]
    assert [n for n, _ in malformed] == [6, 7]


def test_extra_commas_are_joined_only_into_a_display_name_last_column(tmp_path):
    """A 9-column file ends with `usage`: a row with 10 fields is malformed, not read with usage 'Casual,x'."""
    lines = [HEADER9, "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual",
             "2,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Slim"]
    root = _styles_root(tmp_path, lines, ids=(1, 2))
    cat = styles_catalogue(str(root), label_column="articleType")
    assert _labels(cat) == {"1": "Shirts"}
    assert [(s.path, s.reason) for s in cat.skipped] == [
        (f"{root / 'styles.csv'}:3", "malformed row: 10 fields, header has 9")]


def test_utf8_bom_is_read_and_id_is_found(tmp_path):
    lines = [HEADER10, "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Plain shirt",
             "2,Men,Apparel,Topwear,Jeans,Blue,Fall,2011,Casual,Slim jeans"]
    root = _styles_root(tmp_path, lines, ids=(1, 2), encoding="utf-8-sig")
    assert (root / "styles.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    cat = styles_catalogue(str(root), label_column="articleType")
    assert _labels(cat) == {"1": "Shirts", "2": "Jeans"} and not cat.skipped


def test_an_unterminated_quote_costs_its_own_line_only(tmp_path):
    lines = [HEADER10, '1,Men,Apparel,"Topwear,Shirts,Blue,Fall,2011,Casual,Plain shirt',
             "2,Men,Apparel,Topwear,Jeans,Blue,Fall,2011,Casual,Slim jeans",
             "3,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Plain shirt"]
    root = _styles_root(tmp_path, lines, ids=(1, 2, 3))
    cat = styles_catalogue(str(root), label_column="articleType")
    assert _labels(cat) == {"2": "Jeans", "3": "Shirts"}
    assert [(s.path, s.reason.split(":")[0]) for s in cat.skipped] == [(f"{root / 'styles.csv'}:2", "malformed row")]
    assert "unterminated quoted field" in cat.skipped[0].reason


def _old_read_styles_csv(path):
    """The reader before RFC 4180 parsing (verbatim): the reference that the real file must not change."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().strip().split(",")
        rows, malformed = [], []
        for number, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split(",", len(header) - 1)
            if len(fields) == len(header):
                rows.append(fields)
            elif line.strip():
                malformed.append(number)
    return header, rows, malformed


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"Fashion Product Images not found at {FASHION}")
def test_the_real_styles_csv_reads_exactly_as_before(tmp_path):
    path = os.path.join(FASHION, "styles.csv")
    old_header, old_rows, old_malformed = _old_read_styles_csv(path)
    header, rows, malformed = read_styles_csv(path)
    assert header == old_header and rows == old_rows and malformed == [] and old_malformed == []
    on_disk = {n[:-4] for n in os.listdir(os.path.join(FASHION, "images")) if n.endswith(".jpg")}
    labelled = {r[0]: r[header.index("articleType")] for r in rows if r[0] in on_disk}
    assert (len(rows), len(labelled), len(set(labelled.values()))) == (44446, 9583, 75)
    # The display-name copy (quoted fields with "" escapes, 2 empty trailing columns) against the csv module.
    names = os.path.join(FASHION, "styles_productDisplayName.csv")
    with open(names, newline="", encoding="utf-8") as f:
        ref = list(csv.reader(f))
    assert read_styles_csv(names) == (ref[0], ref[1:], [])
    # The original Kaggle layout, rebuilt: the 9 columns + productDisplayName unquoted, as old and new read it.
    kaggle = tmp_path / "styles.csv"
    kaggle.write_text("".join(f"{','.join(r)},{n[1]}\n" for r, n in zip([header] + rows, ref)))
    assert read_styles_csv(str(kaggle)) == _old_read_styles_csv(str(kaggle))[:2] + ([],)


def test_symlinked_class_folders_and_files_are_followed_and_loops_are_listed(tmp_path, image_folder):
    reference = folder_catalogue(str(image_folder))
    root = tmp_path / "linked"
    (root / "brand").mkdir(parents=True)
    os.symlink(image_folder / "class0", root / "class0")  # a linked class folder
    os.symlink(image_folder / "class1", root / "brand" / "class1")  # one level down
    (root / "class2").mkdir()
    for name in sorted(os.listdir(image_folder / "class2")):  # linked image files
        os.symlink(image_folder / "class2" / name, root / "class2" / name)
    os.symlink(root, root / "brand" / "loop")  # a link to an ancestor: must not recurse forever
    os.symlink(tmp_path / "nowhere.png", root / "class2" / "gone.png")  # a dangling link
    cat = folder_catalogue(str(root))
    assert cat.class_names == ("brand/class1", "class0", "class2") and len(cat) == len(reference) == 12

    def content(c):
        return sorted((c.class_names[lab].split("/")[-1], open(p, "rb").read()) for p, lab in zip(c.paths, c.labels))

    assert content(cat) == content(reference)
    reasons = {s.path: s.reason for s in cat.skipped}
    assert set(reasons) == {str(root / "brand" / "loop"), str(root / "class2" / "gone.png")}
    assert reasons[str(root / "brand" / "loop")].startswith("symlink loop: ")
    assert reasons[str(root / "class2" / "gone.png")].startswith("broken symlink: ")


def test_a_loop_through_a_linked_folder_ends_and_is_listed(tmp_path, image_folder):
    """class0/up -> the folder above class0's target: the walk comes back to class0 once, and stops there."""
    root = tmp_path / "linked"
    root.mkdir()
    os.symlink(image_folder / "class0", root / "class0")
    os.symlink(image_folder, image_folder / "class0" / "up")
    cat = folder_catalogue(str(root))
    loops = [s.path for s in cat.skipped if s.reason.startswith("symlink loop")]
    assert loops == [str(root / "class0" / "up" / "class0")]
    # The other classes reached through `up` are catalogued under their linked path.
    assert cat.class_names == ("class0", "class0/up/class1", "class0/up/class2") and len(cat) == 12


def test_a_root_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "photos.zip"
    f.write_bytes(b"PK")
    with pytest.raises(UserError, match=r"^data.root: '.*photos.zip' is a file, not a folder"):
        folder_catalogue(str(f))
    with pytest.raises(UserError, match=r"^data.root: '.*photos.zip' is a file, not a folder"):
        styles_catalogue(str(f), label_column="articleType")
    with pytest.raises(UserError, match=r"^--references: '.*photos.zip' is a file, not a folder; point --references"):
        folder_catalogue(str(f), option="--references")
    with pytest.raises(UserError, match=r"^--references: no readable images .* in '.*empty'"):
        (tmp_path / "empty" / "a").mkdir(parents=True)
        folder_catalogue(str(tmp_path / "empty"), option="--references")


@pytest.mark.parametrize("classes", [1, 2])
def test_too_few_classes_for_a_split_names_the_root_and_the_count(tmp_path, classes):
    root = tmp_path / "few"
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            write_image(str(root / f"c{c}" / f"{i}.png"), seed=10 * c + i)
    cat = folder_catalogue(str(root))
    cfg = common.get_config("digits").split
    cfg.heldout_classes, cfg.num_heldout_classes = (), 1
    with pytest.raises(UserError) as e:
        make_split(cat, cfg, seed=0)
    message = str(e.value)
    assert f"{str(root)!r} has only {classes} class" in message and "at least 3" in message, message
    assert "between 1 and" not in message and "\n" not in message
