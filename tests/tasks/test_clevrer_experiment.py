"""Tests of the CLEVRER video experiment (Table 5): the video model (slots carried from frame to frame, the noise
transitions against torch.distributions), the rows' configurations, the metrics' aggregation (sklearn as the
referee of FG-ARI), the pictures, the command line end to end at a tiny budget, and bad input (refused before
anything is written)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slots import to_model_range
from tasks.clevrer import experiment as ex
from tasks.clevrer import show
from tasks.clevrer.__main__ import main
from tasks.clevrer.model import TRANSITIONS, VideoModelConfig, VideoSlotAutoencoder, video_loss
from tasks.scenes import SceneData

from clevrer_fixtures import box, proposal_object, write_video


def _small(variant="sa-mesh", **kw):
    """A small model of one row (16 x 16 frames would not fit the 64 x 64 position grids, so the size stays)."""
    torch.manual_seed(0)
    cfg = ex.ClevrerConfig(channels=8, slot_dim=16, mlp_hidden=16, n_slots=4, bf16=False, **kw)
    return VideoSlotAutoencoder(cfg.model(variant))


def _frames(B=2, T=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, 3, 64, 64), generator=g, dtype=torch.uint8)


# ---- model ---------------------------------------------------------------------------------------------------
def test_video_model_carries_the_slots_of_frame_1_into_frame_2():
    model = _small("sa")
    x = to_model_range(_frames())
    torch.manual_seed(1)
    out = model(x)
    B, T, K = 2, 2, 4
    assert out.recon.shape == (B, T, 3, 64, 64) and out.masks.shape == (B, T, K, 64, 64)
    assert out.slots.shape == (B, T, K, 16) and out.attn.shape == (B, T, K, 64, 64) and out.reg.shape == ()
    torch.testing.assert_close(out.masks.sum(2), torch.ones(B, T, 64, 64))
    # frame 2 is slot attention on frame 2's features started from frame 1's slots, decoded on its own
    feats = model.image.encode(x[:, 1])
    slots2, _ = model.image.slot_attention(feats, slots=out.slots[:, 0])
    torch.testing.assert_close(out.slots[:, 1], slots2)
    recon2, _, masks2 = model.image.decode(slots2)
    torch.testing.assert_close(out.recon[:, 1], recon2)
    torch.testing.assert_close(out.masks[:, 1], masks2)
    # the loss is the MSE over both frames, and frame 2's error reaches the slot initialization through frame 1
    torch.testing.assert_close(video_loss(out, x), F.mse_loss(out.recon, x))
    F.mse_loss(out.recon[:, 1], x[:, 1]).backward()
    assert model.image.slot_attention.slots_mu.grad.abs().sum() > 0


def test_fixed_noise_transition_adds_noise_of_its_sigma():
    model = _small("sa-fixed-noise", noise_sigma=0.3)
    slots = torch.randn(64, 8, 16)
    moved, reg = model.transition(slots)
    assert float(reg) == 0
    assert abs(float((moved - slots).std()) - 0.3) < 0.01
    carry = TRANSITIONS["carry"](16, model.config)
    assert carry(slots)[0] is slots


def test_learned_noise_samples_its_gaussian_and_its_kl_matches_torch_distributions():
    model = _small("sa-learned-noise", noise_prior_var=0.04)
    t = model.transition
    with torch.no_grad():  # a non-trivial mean and variance
        t.net[-1].bias.normal_()
        t.net[-1].weight.mul_(3)
    slots = torch.randn(2, 4, 16)
    mu, log_var = t.net(slots).chunk(2, dim=-1)
    prior = torch.distributions.Normal(mu, math.sqrt(0.04))
    post = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    _, kl = t(slots)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(post, prior).mean())
    draws, _ = t(slots.expand(4000, 2, 4, 16))  # 4000 draws for every slot at once
    torch.testing.assert_close(draws.mean(0), mu, atol=0.15, rtol=0.05)
    torch.testing.assert_close(draws.var(0).log(), log_var, atol=0.15, rtol=0.05)
    model.zero_grad()
    x = to_model_range(_frames())
    video_loss(model(x), x).backward()  # the KL term trains the transition
    assert t.net[1].weight.grad.abs().sum() > 0


def test_rows_configure_the_official_video_setting():
    cfg = ex.ClevrerConfig()
    for variant, row in ex.VARIANTS.items():
        m = cfg.model(variant)
        sa = m.autoencoder.slot_attention
        assert (sa.variant, m.transition, sa.n_slots, sa.dim, sa.cost) == (row.attention, row.transition, 8, 64,
                                                                           "cosine")
        assert (sa.ot.cost_scale, sa.ot.marginal_scale, sa.ot.normalize_plan) == (6.0, 18.0, False)
        assert sa.ot.mesh_lr == (2.0 if variant == "sa-mesh-low-lr" else 8.0)
        assert m.autoencoder.encoder.resolution == (64, 64)
        assert VideoModelConfig(**json.loads(json.dumps(m.to_dict()))) == m
    assert ex.DEFAULT_VARIANTS == ("sa", "sa-fixed-noise", "sa-learned-noise", "sa-sh", "sa-mesh")
    for bad in (dict(data="M"), dict(n_train=0), dict(backend="cuda"), dict(noise_sigma=0.0), dict(eval_batch=0),
                dict(bf16="yes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ex.ClevrerConfig(**bad)


def test_bf16_convolutions_by_default_only_where_bfloat16_is_native(monkeypatch):
    # emulated bfloat16 (a CPU without AVX-512 BF16 or AMX) is slower than float32: the default follows the hardware
    for native in (False, True):
        monkeypatch.setattr(ex, "native_bf16", lambda device=None, native=native: native)
        cfg = ex.ClevrerConfig()
        assert cfg.bf16 is native and cfg.model("sa-mesh").autoencoder.bf16 is native
        assert ex.ClevrerConfig(bf16=not native).bf16 is (not native)


# ---- metrics ---------------------------------------------------------------------------------------------------
def _toy_test_set(n=3, seed=0):
    """Pairs with a few rectangular objects; object 3 is only in frame 2 (it enters)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 2, 64, 64), np.uint8)
    for i in range(n):
        for k in (1, 2, 3):
            for t in range(2):
                if k == 3 and t == 0:
                    continue
                y, x = rng.integers(0, 56, 2)
                masks[i, t][box(y, x, 8, 8, 64, 64) & (masks[i, t] == 0)] = k
    return SceneData(torch.from_numpy(rng.integers(0, 256, (n, 2, 3, 64, 64), dtype=np.uint8)),
                     torch.from_numpy(masks))


def _in_order(masks):
    """A predictor for ``_scores`` that returns the next rows of ``masks`` (N, 2, K, H, W) at each call."""
    done = [0]

    def predict(frames):
        out = masks[done[0]:done[0] + len(frames)]
        done[0] += len(frames)
        return out, None

    return predict


def test_scores_of_perfect_swapped_and_random_slots():
    from sklearn.metrics import adjusted_rand_score

    test = _toy_test_set()
    onehot = F.one_hot(test.masks.long(), 5).permute(0, 1, 4, 2, 3).float()  # (N, 2, 5, H, W): slot k = object k
    for batch in (2, 3):
        s = ex._scores(test, batch, _in_order(onehot))
        assert (s["fg_ari"], s["fg_miou"], s["tc"]) == (100, 100, 100) and math.isnan(s["mse"])
    swapped = onehot.clone()
    swapped[:, 1, [1, 2]] = onehot[:, 1, [2, 1]]  # objects 1 and 2 change slots in frame 2
    s = ex._scores(test, 2, _in_order(swapped))
    assert s["fg_ari"] == 100 and s["fg_miou"] == 100 and s["tc"] == 0  # objects 1, 2 are the only ones in both
    noise = torch.rand(3, 2, 5, 64, 64, generator=torch.Generator().manual_seed(0))
    s = ex._scores(test, 2, _in_order(noise))
    pred, gt = noise.argmax(2).numpy(), test.masks.numpy()
    want = np.mean([adjusted_rand_score(gt[i, t][gt[i, t] > 0], pred[i, t][gt[i, t] > 0])
                    for i in range(3) for t in range(2)])
    assert s["fg_ari"] == pytest.approx(100 * want)


def test_grid_regions_partition_the_image():
    g = ex.grid_regions(8, 64, 64)
    assert g.shape == (8, 64, 64)
    torch.testing.assert_close(g.sum(0), torch.ones(64, 64))
    assert g.sum((1, 2)).tolist() == [512.0] * 8  # 2 rows x 4 columns of 32 x 16 pixels
    assert g[:, 0, :].argmax(0).unique().tolist() == [0, 1, 2, 3]
    assert ex.grid_regions(7, 70, 70).sum((1, 2)).tolist() == [700.0] * 7  # 1 row x 7 columns


# ---- command line ------------------------------------------------------------------------------------------------
@pytest.fixture
def run_main(run_cli):
    return lambda argv: run_cli(main, argv)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SA_MESH_CACHE", str(tmp_path / "cache"))


TINY = ["--steps", "2", "--batch-size", "2", "--eval-every", "1", "--jobs", "1", "--threads", "1", "--no-progress"]


def test_command_line_end_to_end_at_a_tiny_budget(tmp_path, run_main, run_cli):
    out = tmp_path / "run"
    code, stdout, stderr = run_main(["--data", "L", "--n-train", "4", "--n-test", "3", "--variant", "sa",
                                 "--variant", "sa-mesh", *TINY, "--out", out])
    assert code == 0, stderr
    summary = json.loads((out / "table.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["SA", "SA-MESH"]
    for row in summary["rows"]:
        for key in ("fg_ari", "fg_miou", "tc"):
            assert 0 <= row["metrics"][key]["ours"] <= 100
        assert row["metrics"]["fg_ari"]["paper"] == list(ex.PAPER_TABLE5["L"][row["variant"]]["fg_ari"])
        assert row["metrics"]["mse"]["ours"] > 0
        assert (out / row["variant"] / "seed0" / "pictures.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ex.GRID in summary["baselines"]
    table = (out / "table.md").read_text()
    assert table.startswith("Video object discovery on CLEVRER-L (generated pairs, frames 1 and 128)")
    assert "2 steps of batch 2 on 4 training pairs" in table and "on 3 test pairs" in table
    assert "| SA-MESH |" in table and "paper test MSE" not in table and "92.9 ± 2.2" in table
    # the pictures are drawn again, identically, from the run's checkpoint
    run = out / "sa-mesh" / "seed0"
    first = (run / "pictures.png").read_bytes()
    (run / "pictures.png").unlink()
    code, stdout, stderr = run_cli(show.main, ["--run", run])
    assert code == 0, stderr
    assert stdout.startswith("wrote ") and (run / "pictures.png").read_bytes() == first
    code, _, stderr = run_cli(show.main, ["--run", tmp_path / "nothing"])
    assert code == 2 and "ckpt.pt does not exist" in stderr


def _real_tree(root, breakage=None):
    """A CLEVRER folder with video 0 (train) and video 15000 (test), 16 frames each, for CLEVRER-S."""
    rng = np.random.default_rng(0)
    for split, idx in (("train", 0), ("test", 15000)):
        frames = rng.integers(0, 256, (10 if breakage == "short" and split == "train" else 16, 32, 48, 3),
                              dtype=np.uint8)
        write_video(root / f"video_{split}/video_{idx:05d}.mp4", frames)
        obj = proposal_object(box(4, 4, 8, 8, 32, 48), "red", "metal", "cube")
        prop = {"video_index": idx, "frames": [{"frame_index": 0, "objects": [obj]},
                                               {"frame_index": 15, "objects": [obj]}]}
        if breakage == "other_video" and split == "test":
            prop["video_index"] = 15001
        path = root / f"derender_proposals/proposal_{idx:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (breakage == "missing" and split == "train"):
            path.write_text(json.dumps(prop))


@pytest.mark.parametrize("breakage, message", [
    ("short", r"video_00000\.mp4: has 10 frames, frame index 15 is needed"),
    ("other_video", r"proposal_15000\.json: proposals of video 15001, not of .*video_15000\.mp4"),
    ("missing", r"proposal_00000\.json does not exist"),
    ("no_folder", r"CLEVRER data folder: folder .*absent does not exist"),
    (None, None),
])
def test_bad_real_input_is_refused_before_anything_is_written(tmp_path, run_main, breakage, message):
    import re

    root = tmp_path / ("absent" if breakage == "no_folder" else "clevrer")
    if breakage != "no_folder":
        _real_tree(root, breakage)
    out = tmp_path / "run"
    code, stdout, stderr = run_main(["--data", "S", "--data-dir", root, "--n-train", "1", "--n-test", "1",
                                 "--variant", "sa", "--steps", "1", "--batch-size", "1", *TINY[4:], "--out", out])
    if breakage is None:
        assert code == 0, stderr
        assert json.loads((out / "table.json").read_text())["rows"][0]["metrics"]["tc"]["ours"] in (0.0, 100.0)
        return
    assert code == 2 and stdout == ""
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and re.search(message, line), stderr
    assert not out.exists()
