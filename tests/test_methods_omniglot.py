"""Every method's config trains on real few-shot data and beats its own initialisation on unseen classes.

Omniglot's Korean alphabet (configs/common.py, variant 'omniglot'): 30 characters train, 10 unseen ones
are held out; Conv-4 at 28x28, shortened to a few epochs for CI. One run per loss family.
"""

import json
import os

import pytest

from conftest import OMNIGLOT, run_launch

KOREAN = os.path.join(OMNIGLOT, "images_background_small1", "Korean")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(KOREAN),
                    reason=f"Omniglot not found at {KOREAN} (../shared/data is not part of a fresh clone)")
@pytest.mark.parametrize("method,epochs", [("triplet", 3), ("contrastive", 6), ("protonet", 3),
                                           ("multi_similarity", 3), ("proxy_anchor", 3)])
def test_each_method_improves_heldout_map_on_omniglot(tmp_path, method, epochs):
    r = run_launch([f"--config=configs/{method}.py:omniglot", f"--workdir={tmp_path}", f"--config.data.root={KOREAN}",
                    f"--config.train.num_epochs={epochs}", "--config.model.width=32", "--config.eval.episodes=10"])
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["final"]["map"] > m["initial"]["map"] + 0.02, (m["initial"]["map"], m["final"]["map"])
