"""tfds_catalogue against TFDS itself: mocked public datasets (tfds.testing.mock_data: random examples
from the metadata that ships with tensorflow-datasets, no network) and a tiny dataset prepared in a
temporary folder. The reference is always an iteration of the same data with tfds.load."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from navee_jax.data.tfds_source import tfds_catalogue
from navee_jax.errors import UserError

TINY = "navee_tiny_images"
TINY_CLASSES = ["shirt", "coat", "dress"]  # not alphabetical: class order must follow the ClassLabel


class NaveeTinyImages(tfds.core.GeneratorBasedBuilder):
    """Registered as navee_tiny_images. Split "train": 8 same-size images, one unlabelled (-1), text
    groups; split "mixed": one image of another size."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=TINY_CLASSES),
            "brand": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(8), "mixed": self._generate_examples(3, odd_one=1)}

    def _generate_examples(self, n: int, odd_one: int = -1):
        rng = np.random.default_rng(n)
        for i in range(n):
            size = 5 if i == odd_one else 4
            label = -1 if (n == 8 and i == 3) else i % 3
            yield i, {"image": rng.integers(0, 256, (size, size, 1), dtype=np.uint8), "label": label,
                      "brand": f"brand{i % 2}"}


def reference(name: str, split: str, label_key: str, group_key: str = "", data_dir: str | None = None):
    """(pixels, label names, group names) of every element, read with tfds.load in stored order."""
    ds, info = tfds.load(name, split=split, data_dir=data_dir, download=False, with_info=True)

    def named(key, value):
        feature = info.features[key]
        if isinstance(feature, tfds.features.ClassLabel):
            return feature.names[value] if value >= 0 else None
        return value.decode() if isinstance(value, bytes) else str(value)

    pixels, labels, groups = [], [], []
    for ex in tfds.as_numpy(ds):
        pixels.append(ex["image"])
        labels.append(named(label_key, ex[label_key]))
        groups.append(named(group_key, ex[group_key]) if group_key else None)
    return pixels, labels, groups


def assert_matches(cat, pixels, labels, groups, class_order):
    assert len(cat) == len(pixels)
    np.testing.assert_array_equal(cat.pixels, np.stack(pixels))
    assert cat.pixels.dtype == np.uint8
    assert [cat.class_names[i] for i in cat.labels] == labels
    assert cat.labels.dtype == np.int64
    assert list(cat.class_names) == [c for c in class_order if c in labels]  # only classes that occur
    assert cat.groups == (tuple(groups) if groups[0] is not None else None)


def test_fashion_mnist_matches_mocked_tfds():
    with tfds.testing.mock_data(num_examples=12):
        cat = tfds_catalogue("fashion_mnist", "train", "label")
        pixels, labels, groups = reference("fashion_mnist", "train", "label")
        class_order = tfds.builder("fashion_mnist").info.features["label"].names
    assert len(set(labels)) > 1 and len({p.tobytes() for p in pixels}) == 12  # the mock data is not degenerate
    assert cat.pixels.shape == (12, 28, 28, 1) and cat.skipped == ()
    assert set(labels) <= set(class_order) and not labels[0].isdigit()  # real names, e.g. 'Trouser'
    assert_matches(cat, pixels, labels, groups, class_order)


def test_omniglot_with_alphabet_groups_matches_mocked_tfds():
    with tfds.testing.mock_data(num_examples=12):
        cat = tfds_catalogue("omniglot", "train", "label", group_key="alphabet")
        pixels, labels, groups = reference("omniglot", "train", "label", "alphabet")
        class_order = tfds.builder("omniglot").info.features["label"].names
    assert len(set(labels)) > 1 and len(set(groups)) > 1
    assert cat.pixels.shape == (12, 105, 105, 3) and cat.skipped == ()
    assert_matches(cat, pixels, labels, groups, class_order)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    NaveeTinyImages(data_dir=data_dir).download_and_prepare()  # generated locally; nothing to download
    return data_dir


def test_prepared_dataset_in_data_dir_with_text_groups_and_an_unlabelled_element(tiny_dir):
    cat = tfds_catalogue(TINY, "train", "label", group_key="brand", data_dir=tiny_dir)
    pixels, labels, groups = reference(TINY, "train", "label", "brand", data_dir=tiny_dir)
    unlabelled = [i for i, name in enumerate(labels) if name is None]
    assert len(labels) == 8 and len(unlabelled) == 1
    # Accounted for: 7 images in the catalogue, the unlabelled element listed as skipped.
    assert [s.path for s in cat.skipped] == [f"{TINY}/train element {unlabelled[0]}"]
    assert "unlabelled" in cat.skipped[0].reason
    keep = [i for i in range(8) if i not in unlabelled]
    assert_matches(cat, [pixels[i] for i in keep], [labels[i] for i in keep], [groups[i] for i in keep],
                   TINY_CLASSES)
    assert cat.class_names == ("shirt", "coat", "dress")


def test_images_of_different_shapes_are_refused(tiny_dir):
    with pytest.raises(UserError, match=r"'navee_tiny_images'.*\(4, 4, 1\).*\(5, 5, 1\)|"
                                        r"'navee_tiny_images'.*\(5, 5, 1\).*\(4, 4, 1\)") as e:
        tfds_catalogue(TINY, "mixed", "label", data_dir=tiny_dir)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(split="nosuch", label_key="label"), "split 'nosuch'"),
    (dict(split="train", label_key="colour"), "label key 'colour'"),
    (dict(split="train", label_key="label", group_key="season"), "group key 'season'"),
])
def test_bad_split_or_keys_are_one_line_user_errors(tiny_dir, kwargs, expected):
    with pytest.raises(UserError, match=expected) as e:
        tfds_catalogue(TINY, data_dir=tiny_dir, **kwargs)
    assert TINY in str(e.value) and "\n" not in str(e.value)


def test_unprepared_dataset_is_a_one_line_user_error_naming_it(tmp_path):
    with pytest.raises(UserError) as e:
        tfds_catalogue("fashion_mnist", "train", "label", data_dir=str(tmp_path))
    message = str(e.value)
    assert "'fashion_mnist'" in message and "not prepared" in message and "tfds build fashion_mnist" in message
    assert str(tmp_path) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or written


def test_unknown_dataset_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="'no_such_dataset_xyz'") as e:
        tfds_catalogue("no_such_dataset_xyz", "train", "label", data_dir=str(tmp_path))
    assert "\n" not in str(e.value)


def test_config_source_tfds_name_reaches_the_tfds_catalogue():
    from configs import common
    from navee_jax.data.sources import load_catalogue

    data = common.get_config("digits").data
    data.source, data.tfds_group_key = "tfds:omniglot", "alphabet"
    with tfds.testing.mock_data(num_examples=6):
        cat = load_catalogue(data)
        want = tfds_catalogue("omniglot", "train", "label", "alphabet")
    assert cat.name == "omniglot/train" and len(cat) == 6
    np.testing.assert_array_equal(cat.pixels, want.pixels)
    assert cat.groups == want.groups
