"""Recognizer on a tiny Omniglot model: enroll + predict reproduce the evaluation suite's accuracies, the
calibrated unknown threshold's false-accept rate on unseen alphabets, incremental enrolment, the command
line (enroll / predict / embed), bad images, gallery compatibility, and the StableHLO / SavedModel exports."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import ml_collections
import numpy as np
import pytest

from conftest import OMNIGLOT, REPO, run_launch
from navee_jax.data.sources import folder_catalogue
from navee_jax.errors import UserError
from navee_jax.data.episodes import EpisodeSampler
from navee_jax.launcher.evaluate import evaluate_run
from navee_jax.recognize import Gallery, Recognizer
from navee_jax.recognize.__main__ import main as cli_main

SMALL1 = os.path.join(OMNIGLOT, "images_background_small1")
KOREAN = os.path.join(SMALL1, "Korean")
pytestmark = pytest.mark.skipif(not os.path.isdir(KOREAN),
                                reason=f"Omniglot not found at {KOREAN} (../shared/data is not part of a fresh clone)")
EPISODES = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A Conv-4 (width 16, 32-d) triplet model trained for 3 epochs on 30 Korean characters (~15 s)."""
    w = tmp_path_factory.mktemp("recognize") / "w"
    r = run_launch(["--config=configs/triplet.py:omniglot", f"--workdir={w}", f"--config.data.root={KOREAN}",
                    "--config.model.width=16", "--config.model.embed_dim=32", "--config.train.num_epochs=3",
                    "--config.eval.episodes=5"])
    assert r.returncode == 0, r.stderr[-3000:]
    return str(w)


@pytest.fixture(scope="module")
def rec(workdir):
    return Recognizer.load(workdir)


@pytest.fixture(scope="module")
def split(workdir):
    """Held-out Korean characters: (support paths, support articles, query paths, query articles)."""
    with open(os.path.join(workdir, "splits.json")) as f:
        s = json.load(f)
    article = lambda p: os.path.basename(os.path.dirname(p))  # noqa: E731
    return s["support"], [article(p) for p in s["support"]], s["query"], [article(p) for p in s["query"]]


def _alphabet(name):
    cat = folder_catalogue(os.path.join(SMALL1, name))
    return list(cat.paths), [f"{name}/{cat.class_names[c]}" for c in cat.labels]


def test_enroll_predict_reproduce_the_evaluation_suite_accuracies(workdir, rec, split):
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.eval.standard_episodes, config.eval.baselines = EPISODES, ()
    config.eval.grid_ways, config.eval.grid_shots = (2,), (1,)
    with redirect_stdout(io.StringIO()):
        results = evaluate_run(config, workdir)
    reported = {(c["classifier"], c["shots"]): c["mean"]
                for c in results["sources"]["trained embedding"]["standard"]}

    s_paths, s_art, q_paths, q_art = split
    emb = rec.embed(s_paths + q_paths)
    support, query = emb[:len(s_paths)], emb[len(s_paths):]
    names, s_lab = np.unique(s_art, return_inverse=True)
    q_lab = np.searchsorted(names, q_art)
    for shots in (1, 5):
        eps = EpisodeSampler(s_lab, q_lab).sample(5, shots, config.eval.queries_per_class, EPISODES,
                                                  np.random.default_rng([config.seed, 5, shots]))
        for mode, classifier in (("nn", "1nn"), ("prototype", "prototype")):
            acc = []
            for e in range(EPISODES):
                # A fresh gallery per episode, enrolled in the episode's (class-major) support order.
                rec.gallery = Gallery(rec.dim, rec.fingerprint)
                rec.gallery.add(support[eps.support[e]], names[eps.classes[e][eps.support_labels[e]]])
                mask = eps.query_mask[e]
                predicted = [p.article for p in rec.predict_embeddings(query[eps.query[e][mask]], k=1, mode=mode)]
                truth = names[eps.classes[e][eps.query_labels[e][mask]]]
                acc.append(np.sum(np.array(predicted) == truth) / mask.sum())
            assert np.mean(acc) == reported[(classifier, shots)], (mode, shots)


def test_unknown_detection_at_the_calibrated_threshold(rec, split):
    """10 held-out Korean characters enrolled; threshold calibrated on half of their query photos plus the
    Balinese alphabet (not enrolled); false accepts measured on Early Aramaic, recall on the other half."""
    s_paths, s_art, q_paths, q_art = split
    bal_paths, bal_art = _alphabet("Balinese")
    ara_paths, ara_art = _alphabet("Early_Aramaic")
    rec.gallery = Gallery(rec.dim, rec.fingerprint)
    rec.enroll(s_paths, s_art)
    q_art = np.array(q_art)
    first_half = np.concatenate([np.flatnonzero(q_art == a)[:5] for a in np.unique(q_art)])
    second_half = np.setdiff1d(np.arange(len(q_art)), first_half)
    target = 0.05
    cal = rec.calibrate([q_paths[i] for i in first_half] + bal_paths, list(q_art[first_half]) + bal_art, target)
    unknown_preds = rec.predict(ara_paths, k=1)
    known_preds = rec.predict([q_paths[i] for i in second_half], k=1)
    far = np.mean([not p.unknown for p in unknown_preds])
    recall = np.mean([p.article == a for p, a in zip(known_preds, q_art[second_half])])
    accept = np.mean([not p.unknown for p in known_preds])
    print(f"\nnn: threshold {cal['nn']['threshold']:.4f}, target FAR {target}, calibration FAR {cal['nn']['far']:.4f}"
          f" ({cal['nn']['negatives']} negatives); measured FAR {far:.4f} on {len(ara_paths)} Early Aramaic images; "
          f"enrolled queries accepted {accept:.4f}, accepted and correct (recall) {recall:.4f} of {len(second_half)}")
    assert cal["nn"]["far"] <= target and cal["nn"]["negatives"] == len(first_half) + len(bal_paths)
    assert abs(far - target) <= 0.05
    # An independent count: the measured FAR is the fraction of Early Aramaic best-match distances <= threshold.
    emb = rec.embed(ara_paths)
    best = np.sqrt(((emb[:, None] - rec.gallery.embeddings[None]) ** 2).sum(-1)).min(axis=1)
    assert far == pytest.approx(np.mean(best <= cal["nn"]["threshold"] + 1e-6), abs=2 / len(ara_paths))


def test_incremental_enroll_of_images_equals_enrolling_at_once(rec, split):
    s_paths, s_art, q_paths, _ = split
    articles = sorted(set(s_art))
    rec.gallery = Gallery(rec.dim, rec.fingerprint)
    for a in articles:  # one article at a time
        rec.enroll([p for p, x in zip(s_paths, s_art) if x == a], [a] * s_art.count(a))
    rec.remove([articles[3]])
    incremental = rec.predict(q_paths, k=3, mode="prototype") + rec.predict(q_paths, k=3)
    rec.gallery = Gallery(rec.dim, rec.fingerprint)
    keep = [i for i, x in enumerate(s_art) if x != articles[3]]
    rec.enroll([s_paths[i] for i in keep], [s_art[i] for i in keep])
    assert incremental == rec.predict(q_paths, k=3, mode="prototype") + rec.predict(q_paths, k=3)


def _tree(root, paths, articles):
    """root/<article>/<file> as symbolic links to the shared data (never copied)."""
    for p, a in zip(paths, articles):
        os.makedirs(os.path.join(root, a), exist_ok=True)
        os.symlink(p, os.path.join(root, a, os.path.basename(p)))
    return str(root)


def test_cli_enroll_predict_bad_image_and_gallery_check(tmp_path, workdir, rec, split, capsys):
    s_paths, s_art, q_paths, q_art = split
    refs = _tree(tmp_path / "refs", s_paths, s_art)
    cal = _tree(tmp_path / "cal", q_paths[::2], q_art[::2])
    gallery = str(tmp_path / "gallery")
    assert cli_main(["enroll", f"--workdir={workdir}", f"--references={refs}", f"--gallery={gallery}",
                     f"--calibration={cal}", "--target_far=0.1"]) == 0
    assert "unknown threshold" in capsys.readouterr().out
    queries = tmp_path / "queries"
    queries.mkdir()
    for p in q_paths[1::2][:12]:
        os.symlink(p, queries / os.path.basename(p))
    (queries / "0000_broken.png").write_bytes(b"not an image")
    assert cli_main(["predict", f"--gallery={gallery}", f"--images={queries}", "--format=json", "--top_k=3"]) == 1
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert rows[0]["error"].startswith("unreadable image") and "0000_broken.png" in out.err
    assert all(r["error"] is None and len(r["top_k"]) == 3 for r in rows[1:])  # the others are processed

    rec.load_gallery(gallery)  # the API on the same gallery gives the same rows
    api = rec.predict([r["image"] for r in rows[1:]], k=3)
    assert [(r["article"], r["unknown"]) for r in rows[1:]] == [(p.article or "unknown", p.unknown) for p in api]
    assert [r["distance"] for r in rows[1:]] == [p.distance for p in api]

    assert cli_main(["predict", f"--gallery={gallery}", *[r["image"] for r in rows[1:3]]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image,article,distance,unknown,top_k,error" and len(lines) == 3

    first = min(os.listdir(os.path.join(workdir, "checkpoints")), key=int)
    loo = str(tmp_path / "loo")  # without --calibration: leave-one-out on the references
    assert cli_main(["enroll", f"--workdir={workdir}", f"--references={refs}", f"--gallery={loo}"]) == 0
    assert "(leave-one-out on the references)" in capsys.readouterr().out
    assert Gallery.load(loo).calibration["nn"]["negatives"] == len(s_paths)

    other = Recognizer.load(os.path.join(workdir, "checkpoints", first))  # epoch 1's weights
    with pytest.raises(UserError, match="different model or preprocessing: weights_sha256"):
        other.load_gallery(gallery)


def test_embed_cli_round_trip_equals_the_api(workdir, rec, split):
    paths = split[0][:5] + ["/no/such/image.png"] + split[2][:3]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "navee_jax.recognize", "embed", f"--workdir={workdir}"], cwd=REPO,
                       env=env, input="\n".join(paths) + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "/no/such/image.png" in r.stderr  # the bad path is reported ...
    got = np.array([[float(x) for x in line.split()] for line in r.stdout.splitlines()], np.float32)
    assert got.shape == (len(paths), rec.dim) and np.isnan(got[5]).all()  # ... and keeps its line
    want = rec.embed(paths[:5] + paths[6:])
    np.testing.assert_array_equal(np.delete(got, 5, axis=0), want)  # %.9g round-trips float32 exactly


def test_exported_stablehlo_and_savedmodel_reproduce_embed(tmp_path, workdir, rec, split):
    from navee_jax.data.catalogue import Catalogue
    from navee_jax.data.pipeline import eval_batches
    from navee_jax.data.tf_import import tf_module
    from navee_jax.recognize.export import SAVED_MODEL_NAME, STABLEHLO_NAME, load_stablehlo

    paths = split[0][:7] + split[2][:6]
    out = tmp_path / "export"
    assert cli_main(["export", f"--workdir={workdir}", f"--out={out}"]) == 0
    cat = Catalogue("q", np.zeros(len(paths), np.int64), ("",), paths=tuple(paths), transparent=(False,) * len(paths))
    images = np.concatenate(list(eval_batches(cat, np.arange(len(paths)), rec.config.data, 64)))
    want = rec.embed(paths)
    stablehlo = np.asarray(load_stablehlo(str(out / STABLEHLO_NAME))(images))
    tf = tf_module()
    saved = tf.saved_model.load(str(out / SAVED_MODEL_NAME))
    tf_out = saved.signatures["serving_default"](images=tf.constant(images))["embeddings"].numpy()
    assert np.abs(stablehlo - want).max() <= 1e-5 and np.abs(tf_out - want).max() <= 1e-5
    assert stablehlo.shape == (13, rec.dim)  # another batch size than the recognizer's: the batch is symbolic
    assert json.loads((out / "preprocessing.json").read_text())["weights_sha256"] == rec.fingerprint["weights_sha256"]


def test_pil_images_and_arrays_embed_like_their_files_and_bad_input_is_one_line(tmp_path, rec, split):
    from PIL import Image

    paths = split[0][:3]
    pil = [Image.open(p) for p in paths]  # PNG: lossless, so PIL and tf.io decode the same pixels
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in pil])
    want = rec.embed(paths)
    np.testing.assert_array_equal(rec.embed(pil), want)
    np.testing.assert_array_equal(rec.embed(arrays), want)  # an (N, H, W, 3) batch
    emb, errors = rec.embed_or_errors([paths[0], np.zeros((4, 4), np.float32), paths[1]])
    assert list(errors) == [1] and "expected uint8" in errors[1] and np.isnan(emb[1]).all()
    np.testing.assert_array_equal(emb[[0, 2]], want[:2])
    with pytest.raises(UserError, match="is not a training workdir"):
        Recognizer.load(str(tmp_path))
    maml_workdir = tmp_path / "maml"
    maml_workdir.mkdir()
    (maml_workdir / "config.json").write_text(json.dumps({"method": "maml", "loss": {"name": "maml"}}))
    with pytest.raises(UserError, match="holds a MAML model"):
        Recognizer.load(str(maml_workdir))
    with pytest.raises(UserError, match="2 labels for 3 images"):
        rec.enroll(paths, ["a", "b"])
    with pytest.raises(UserError, match="not a gallery folder"):
        rec.load_gallery(str(tmp_path))
