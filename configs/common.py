"""Defaults shared by every experiment; experiment configs start from `get_config(variant)` and override.

Not runnable on its own: pass an experiment config, e.g. --config=configs/triplet.py. Variants (the part
after ':' in --config=configs/X.py:variant):
- '' (default): glyphs, the letters of the Latin, Greek and Cyrillic alphabets in the 16 fonts matplotlib
  installs (130 distinct letters x 16 fonts, offline: navee_jax.data.glyphs); 30 letters drawn by the seed are
  held out, 100 train; ResNet-18 at 32x32.
- 'digits': scikit-learn's bundled digits, classes 0-5 train, 6-9 held out; ResNet-18 at 32x32.
- 'omniglot': one Omniglot alphabet (Korean: 40 characters x 20 drawers) from ../shared/data, 30 characters
  train and 10 unseen ones drawn by the seed are held out; Conv-4 at 28x28 (the few-shot papers' setting).
- 'omniglot_all': all ten alphabets of both background-small folders of ../shared/data/omniglot, the second
  copies of Greek and Latin skipped as exact duplicates: 242 distinct characters, 200 train and 42 unseen ones
  (enough for 20-way episodes) drawn by the seed are held out; otherwise as 'omniglot'.
- 'omniglot_background': Omniglot's whole background set (30 alphabets, 964 characters x 20 drawers) from
  ../shared/data/omniglot_background, the papers' protocol: 5 whole alphabets drawn by the seed are held out
  for validation, and every training character rotated by 90, 180 and 270 degrees is a class of its own;
  5-way episodes; otherwise as 'omniglot'.
- 'fashion_{types,articles}_{seen,unseen}': the Kaggle fashion photos of ../shared/data/fashion_product_images
  (styles.csv), the class an articleType ('types', 75 classes) or an articleType+baseColour ('articles', 717
  classes, 62% of them of 5 photos or fewer); held out either 10 / 80 classes of Apparel drawn by the seed, the
  rest of Apparel training ('seen': the study's seen-brand set), or all of Accessories, a masterCategory
  training never sees ('unseen': the study's unseen-brand set). ResNet-18 at half width, 64x64, the study's
  augmentation (flips, rotations, random crops); --config.data.image_size=224 --config.model.width=64 is the
  study's full-resolution setting, for a GPU.
"""

import os

import ml_collections
from ml_collections import config_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The project's real data sets live beside the repository (../shared/data), never in it.
SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared", "data")
OMNIGLOT = os.path.normpath(os.path.join(SHARED_DATA, "omniglot"))
OMNIGLOT_KOREAN = os.path.join(OMNIGLOT, "images_background_small1", "Korean")
OMNIGLOT_BACKGROUND = os.path.normpath(os.path.join(SHARED_DATA, "omniglot_background", "images_background"))
FASHION = os.path.normpath(os.path.join(SHARED_DATA, "fashion_product_images"))
# The fashion photos' two granularities (the class: an article type, or an article-like type and colour) ...
FASHION_LABELS = {"types": "articleType", "articles": "articleType+baseColour"}
# ... and two test sets: 'seen' (classes of Apparel, whose other classes train: the study's Versace set) and
# 'unseen' (every Accessories class, a masterCategory training never sees: the study's Givenchy set)
FASHION_VARIANTS = tuple(f"fashion_{g}_{t}" for g in FASHION_LABELS for t in ("seen", "unseen"))
VARIANTS = ("", "digits", "omniglot", "omniglot_all", "omniglot_background", *FASHION_VARIANTS)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The training method (navee_jax.method): 'metric_learning' trains loss.name's embedding loss; 'maml'
    # meta-learns (configs/maml.py); others are registered with navee_jax.method.register_method.
    c.method = "metric_learning"

    c.data = ml_collections.ConfigDict()
    # 'glyphs' (letters in matplotlib's fonts, offline) | 'digits' (sklearn's bundled 8x8 digits, offline)
    # | 'folder' (root/.../<class>/<image>, any depth)
    # | 'styles_csv' (Kaggle Fashion Product Images: root/styles.csv + root/images/<id>.jpg) | 'tfds:<name>'
    c.data.source = "digits"
    c.data.root = config_dict.placeholder(str)  # folder / styles_csv sources: the data root
    c.data.group_level = -1  # folder source: path component naming the group (0 = first level; -1 = none)
    c.data.label_column = "articleType"  # styles_csv source: the class column
    c.data.group_column = ""  # styles_csv source: the group column ('' = none), e.g. masterCategory
    # styles_csv source: coarser columns a classifier is also scored at, e.g. ('subCategory', 'masterCategory')
    c.data.label_levels = ()
    c.data.duplicates = "skip"  # folder / styles_csv: exact duplicate files: 'skip' later copies | 'keep' all
    c.data.tfds_split = "train"  # 'tfds:<name>' sources (a dataset already prepared; nothing downloads)
    c.data.tfds_label_key = "label"
    c.data.tfds_group_key = ""  # e.g. 'alphabet' for tfds:omniglot
    c.data.tfds_data_dir = config_dict.placeholder(str)
    c.data.image_size = 32  # images are resized to image_size x image_size ...
    c.data.resize = "squash"  # ... by stretching ('squash') or keeping the aspect ratio and padding ('pad'), ...
    # ... or ('crop') the shorter side resized to image_size / crop_fraction and the centre square kept (DINOv2's
    # 256 -> 224: 0.875), with this interpolation (bilinear | bicubic, as a pretrained model's processor says)
    c.data.crop_fraction = 1.0
    c.data.interpolation = "bilinear"
    c.data.fill = 1.0  # padding / rotation fill in [0, 1]: white, the background of product photos
    c.data.grayscale = False  # luminance on 3 channels
    c.data.binarize = False  # grayscale thresholded at 0.5 (Omniglot is 1-bit)
    # Omniglot's standard protocol: each training class rotated by these angles (of 90, 180, 270) is a new
    # training class; held-out classes are never rotated (navee_jax.data.rotations)
    c.data.rotated_classes = ()
    # Training-time augmentation, each one off by default except the flip:
    c.data.flip = True  # random horizontal flip
    c.data.rotation_deg = 0.0  # random rotation in [-deg, +deg]
    c.data.translate_px = 0.0  # random shift of up to this many pixels (of the resized image) on each axis
    c.data.crop_scale_min = 1.0  # < 1: random resized crop of [crop_scale_min, 1] of the area
    c.data.color_jitter = 0.0  # strength of random brightness / contrast / saturation
    c.data.affine = False  # Koch's: rotate +-10 deg, shear +-0.3, scale 0.8-1.2, shift +-2 px at 105x105; each p=0.5
    c.data.mean = IMAGENET_MEAN
    c.data.std = IMAGENET_STD

    c.split = ml_collections.ConfigDict()
    # 'classes' | 'groups' (whole groups unseen) | 'partial' (classes of one seen group) | 'stratified'
    # (classification: every class's images divided into train / validation / test)
    c.split.mode = "classes"
    c.split.seed = -1  # -1: the run's seed; set it to keep one split across runs of other seeds (an ensemble)
    c.split.heldout_classes = ("6", "7", "8", "9")  # mode 'classes'; () = draw num_heldout_classes
    c.split.num_heldout_classes = 0  # modes 'classes' and 'partial'
    c.split.heldout_groups = ()  # mode 'groups', by name; () = draw num_heldout_groups
    c.split.num_heldout_groups = 1
    c.split.partial_group = ""  # mode 'partial': the seen group that gives up num_heldout_classes classes
    c.split.train_groups = ()  # modes 'groups' / 'partial': only these groups train; () = every group not held out
    c.split.support_fraction = 0.5  # of each held-out class's images; the rest are queries ...
    c.split.support_count = 0  # ... unless this is > 0: that many support images per class (e.g. 5 shots)
    c.split.min_images_per_class = 2  # smaller held-out classes are reported as unused
    c.split.test_fraction = 0.2  # mode 'stratified': of each class's images (at least one), ...
    c.split.validation_fraction = 0.1  # ... and of the rest, where a class has images to spare

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "resnet18"  # resnet18 | resnet50 | conv4 | koch | vgg16 | vgg16_bn
    c.model.width = 64  # channels of the first stage (64 in every paper's network; pretrained weights need 64)
    c.model.block_widths = ()  # conv4: each of its four blocks' filters, e.g. (64, 64, 128, 128); () = width in all
    # conv4: the last block max-pools its whole map (at 28x28 its 2x2 pool reads only the top-left 2x2 of 3x3)
    c.model.global_pool = False
    c.model.in_channels = 3  # 1 (e.g. Koch's 105x105x1) feeds one channel of data.grayscale / data.binarize images
    c.model.remove_top_layers = 1  # vgg*: drop the top n of [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8]; 1 = fc7
    c.model.pretrained = ""  # '' random init; a dir from `python -m navee_jax.models.convert` or a .pth/.safetensors
    c.model.compute_dtype = "float32"  # 'bfloat16': the backbone computes in bf16, parameters stay float32
    c.model.embed_dim = 256  # the embedding head projects the backbone's features to this size
    c.model.normalize = True  # L2-normalise embeddings
    # resnet*: the last feature map averaged over a pool_grid x pool_grid grid of regions and flattened (the
    # spatial layout HOG keeps; 1 = global average pooling, the papers')
    c.model.pool_grid = 1
    # resnet*: the stages kept (4 = the whole network); fewer end on an earlier, larger feature map, e.g. 3 with
    # pool_grid=4 keeps the third stage's 4x4 map of a 64x64 image (docs/fashion.md)
    c.model.num_stages = 4
    c.model.tta_shift_px = 0  # > 0: evaluation embeds each image as the mean over its 9 shifts by {-px, 0, px}^2
    # > 0: evaluation and recognition whiten the embedding (PCA whitening, axes divided by sigma ** whiten), fitted
    # on model.whiten_images training images before every evaluation and checkpoint (navee_jax.models.whitening)
    c.model.whiten = 0.0
    c.model.whiten_images = 4096
    c.model.frozen_batchnorm = False  # True: BatchNorm keeps its stored statistics during training
    c.model.frozen_stages = ()  # backbone stages that do not train, e.g. ("conv1", "bn1", "layer1"): weights and BN
    c.model.head_batchnorm = False  # BatchNorm on the projection, before the optional L2 normalisation
    c.model.head_hidden = 0  # > 0: the head is an MLP (a hidden layer of this size, ReLU); 0: one linear projection
    # vit_*: only the last n blocks (and the final norm, pooling, projection and head) train; -1: every block
    # (e.g. after top-tuning, with model.init_workdir: configs/top_tune.py)
    c.model.train_last_blocks = -1
    c.model.init_workdir = ""  # a trained workdir (or `<it>/checkpoints/<step>`) whose model this run starts from

    c.top = ml_collections.ConfigDict()  # method='top_tune' (configs/top_tune.py)
    c.top.views = 1  # cached views of each training image: the plain one, then augmented ones
    c.top.cache_dir = "runs/feature_cache"  # where the frozen backbone's features are kept, one file per key

    c.sampler = ml_collections.ConfigDict()
    # pk | pairs | triplets | episodes | tasks | shuffled: what a train batch is (each method / loss names its kinds)
    c.sampler.kind = "pk"
    c.sampler.batch_size = 64  # 'shuffled': images per global batch, each epoch a fresh permutation
    c.sampler.classes_per_batch = 6  # P
    c.sampler.images_per_class = 8  # K; the global batch is P*K
    c.sampler.ways = 5  # episodic methods: N classes per episode ...
    c.sampler.shots = 1  # ... K support images each (filled with augmented copies when a class is short) ...
    c.sampler.queries = 5  # ... and Q query images each
    c.sampler.tasks_per_batch = 32  # 'tasks' (MAML): episodes per meta-batch, sharded over devices
    c.sampler.tuples_per_batch = 32  # pair / triplet samplers: pairs or triplets per global batch ...
    c.sampler.p_same = 0.5  # ... each pair is of one class with this probability (the study's contrastive setup)

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0  # decoupled (AdamW); 0 = plain Adam
    c.optim.decay_every_epochs = 30  # learning rate is multiplied by decay_factor every N epochs
    c.optim.decay_factor = 0.1

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 10
    c.train.steps_per_epoch = 0  # 0 = ceil(training images / batch size)
    c.train.log_every = 10
    c.train.keep_checkpoints = 3  # the latest few, plus the best by held-out mAP

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256
    c.eval.ways = 4
    c.eval.shots = (1, 5)
    c.eval.queries_per_class = 15
    c.eval.episodes = 50  # per N-way K-shot setting (and per grid cell in --mode=evaluate)
    # --mode=evaluate (navee_jax.launcher.evaluate): the N x K grid (1-NN), the standard 5-way 1-/5-shot protocol
    # with each classifier (1nn | knn | prototype | logreg | mlp), and the baselines beside the network
    c.eval.grid_ways = (2, 5, 10, 20, 50)
    c.eval.grid_shots = (1, 2, 3, 5, 10)
    c.eval.standard_episodes = 600
    c.eval.classifiers = ("1nn", "prototype")  # logreg and mlp fit a model per episode: slower
    c.eval.baselines = ("raw pixels", "HOG")
    c.eval.metric = "euclidean"  # retrieval distance: euclidean | cosine
    if variant == "":
        _glyphs(c)
    if variant.startswith("omniglot"):
        _omniglot(c)
    if variant == "omniglot_all":
        c.data.root, c.data.group_level = OMNIGLOT, 1  # <folder>/<alphabet>/<character>: groups are alphabets
        c.split.num_heldout_classes = 42
    if variant == "omniglot_background":
        c.data.root, c.data.group_level = OMNIGLOT_BACKGROUND, 0  # <alphabet>/<character>
        c.data.rotated_classes = (90, 180, 270)
        c.split.mode, c.split.num_heldout_classes, c.split.num_heldout_groups = "groups", 0, 5
        c.eval.ways = 5
    if variant.startswith("fashion_"):
        _fashion(c, *variant.split("_")[1:])
    return c


def _fashion(c: ml_collections.ConfigDict, granularity: str, test_set: str) -> None:
    c.data.source, c.data.root = "styles_csv", FASHION
    c.data.label_column, c.data.group_column = FASHION_LABELS[granularity], "masterCategory"
    c.data.image_size = 64
    c.data.flip, c.data.rotation_deg, c.data.crop_scale_min = True, 10.0, 0.8  # the study's augmentation
    c.model.width = 32  # ResNet-18 at half width: the CPU budget of docs/fashion.md
    if test_set == "unseen":
        c.split.mode, c.split.heldout_groups, c.split.num_heldout_groups = "groups", ("Accessories",), 0
    else:
        c.split.mode, c.split.partial_group = "partial", "Apparel"
        c.split.num_heldout_classes = 10 if granularity == "types" else 80
    c.sampler.classes_per_batch, c.sampler.images_per_class = 16, 4
    c.eval.ways = 5
    c.eval.grid_ways, c.eval.grid_shots = (2, 5, 10, 20), (1, 2, 3, 5, 10)


def _glyphs(c: ml_collections.ConfigDict) -> None:
    c.data.source, c.data.flip = "glyphs", False  # a mirrored letter is another letter, or none
    c.split.heldout_classes, c.split.num_heldout_classes = (), 30


def _omniglot(c: ml_collections.ConfigDict) -> None:
    c.data.source, c.data.root = "folder", OMNIGLOT_KOREAN
    c.data.image_size, c.data.flip, c.data.binarize = 28, False, True  # 1-bit drawings; mirrored letters differ
    c.split.heldout_classes, c.split.num_heldout_classes = (), 10
    c.model.backbone = "conv4"
    c.sampler.classes_per_batch, c.sampler.images_per_class = 8, 4
