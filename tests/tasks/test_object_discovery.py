"""Tests of tasks.object_discovery: resizing of the data, the model of each variant, the metrics on masks
whose answer is known, the fixed-regions baseline, the data checks and the App. J picture."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from slots import AutoencoderOutput
from tasks.object_discovery import (VARIANT_COSTS, ImageSet, ModelSpec, build_model, check_scenes, evaluate,
                                    evaluate_fixed_regions, fixed_region_masks, reconstruction_loss, save_examples)
from tasks.scenes.records import DataFormatError, SceneData

SPEC = ModelSpec(channels=8, slot_dim=12, mlp_hidden=16, n_slots=4)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest.one_thread


def _scenes(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):  # three axis-aligned boxes per image, later ones on top
        for k in range(1, 4):
            y, x = torch.randint(0, size - 5, (2,), generator=g).tolist()
            masks[i, y:y + 5, x:x + 5] = k
    palette = torch.tensor([[20, 20, 20], [200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=torch.uint8)
    images = palette[masks.long()].permute(0, 3, 1, 2).contiguous()
    return SceneData(images, masks, ids=[f"img{i}.png" for i in range(n)])


def test_image_set_batches_and_resize():
    data = _scenes(size=16)
    full = ImageSet(data, 16)
    b = full[torch.tensor([1, 3])]
    assert b["images"].shape == (2, 3, 16, 16) and b["images"].dtype == torch.float32
    assert b["images"].min() >= -1 and b["images"].max() <= 1
    torch.testing.assert_close(b["images"], data.images[[1, 3]].float() / 127.5 - 1)
    assert list(b) == ["images"] and torch.equal(full.masks, data.masks)
    half = ImageSet(data, 8)
    assert half.images.shape == (6, 3, 8, 8) and half.masks.shape == (6, 8, 8)
    assert torch.equal(half.masks, data.masks[:, 1::2, 1::2])  # nearest pixel centre, as PIL resizes
    # referee: PIL's bilinear resize (a triangle filter over the footprint, as ClevrTex's preprocessing)
    for i in range(6):
        pil = Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).resize((8, 8), Image.BILINEAR)
        ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert (half.images[i].int() - ref.int()).abs().max() <= 1


@pytest.mark.parametrize("variant", sorted(VARIANT_COSTS))
def test_build_model_follows_the_official_choices(variant):
    model = build_model(SPEC, variant, 16)
    sa = model.config.slot_attention
    assert sa.cost == ("dot" if variant == "sa" else "l2") and sa.n_slots == 4 and sa.n_iters == 3
    assert sa.ot.normalize_plan is False and sa.ot.mesh_iters == 4 and sa.ot.mesh_lr == 8 and sa.ot.n_sh_iters == 5
    assert model.config.channels_last and model.config.factored_broadcast
    plain = build_model(SPEC, variant, 16, n_iters=5, init="per_slot", fast=False)
    assert not (plain.config.bf16 or plain.config.channels_last or plain.config.factored_broadcast)
    assert plain.config.slot_attention.n_iters == 5 and plain.config.slot_attention.init == "per_slot"
    with pytest.raises(ValueError, match="variant"):
        build_model(SPEC, "sa-foo", 16)


def test_bf16_only_where_native(monkeypatch):
    import tasks.object_discovery as od

    monkeypatch.setattr(od, "native_bf16", lambda device=None: False)
    cfg = build_model(SPEC, "sa-mesh", 16).config
    assert not cfg.bf16 and cfg.channels_last and cfg.factored_broadcast
    monkeypatch.setattr(od, "native_bf16", lambda device=None: True)
    assert build_model(SPEC, "sa-mesh", 16).config.bf16


def test_reconstruction_loss_trains():
    torch.manual_seed(0)
    data = ImageSet(_scenes(n=4, size=16), 8)
    model = build_model(SPEC, "sa", 8, fast=False)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    batch = data[torch.arange(4)]
    with torch.no_grad():
        first = float(reconstruction_loss(model, batch))
    for _ in range(20):
        loss = reconstruction_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


class _OracleModel(nn.Module):
    """Masks read off the image colours (the palette of ``_scenes``): the perfect segmentation, optionally
    with objects 1 and 2 merged into one slot."""

    def __init__(self, merge=False):
        super().__init__()
        self.merge = merge

    def forward(self, images):
        red, green, blue = images[:, 0] > 0, images[:, 1] > 0, images[:, 2] > 0
        ids = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.long)
        ids[red], ids[green], ids[blue] = 1, 1 if self.merge else 2, 3
        masks = nn.functional.one_hot(ids, 4).permute(0, 3, 1, 2).float()
        return AutoencoderOutput(images, None, masks, None, None)


def test_evaluate_on_known_answers():
    data = ImageSet(_scenes(n=10, size=16), 16)
    perfect = evaluate(_OracleModel(), data, batch_size=3)
    assert perfect["fg_ari"] == pytest.approx(100) and perfect["fg_miou"] == pytest.approx(100)
    assert perfect["mse"] == 0
    merged = evaluate(_OracleModel(merge=True), data, batch_size=4)
    assert merged["fg_ari"] < 90 and merged["fg_miou"] < 90


def test_fixed_region_masks_partition_the_image():
    for k, r in ((1, 8), (6, 32), (11, 64)):
        m = fixed_region_masks(k, r)
        assert m.shape == (k, r, r)
        torch.testing.assert_close(m.sum(0), torch.ones(r, r))
        area = m.sum((1, 2))
        assert area.min() > 0 and area.max() < 2.5 * area.min()  # k-means cells have similar areas
        assert torch.equal(m, fixed_region_masks(k, r))
    with pytest.raises(ValueError, match="n_regions"):
        fixed_region_masks(0, 8)


def test_fixed_regions_baseline_scores_its_own_regions_perfectly():
    regions = fixed_region_masks(4, 16)
    gt = regions.argmax(0).to(torch.uint8)  # objects 0..3 = the regions; region 0 is the background
    images = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    data = ImageSet(SceneData(images, gt.expand(3, 16, 16).clone()), 16)
    res = evaluate_fixed_regions(data, 4)
    assert res["fg_ari"] == pytest.approx(100) and res["fg_miou"] == pytest.approx(100)
    shifted = ImageSet(SceneData(images, gt.roll(5, 1).expand(3, 16, 16).clone()), 16)
    assert evaluate_fixed_regions(shifted, 4)["fg_miou"] < 90


def test_check_scenes_names_the_problem():
    data = _scenes(n=3, size=16)
    check_scenes(data, 16, 3, "train split")
    with pytest.raises(DataFormatError, match=r"train split: images are \(3, 16, 16\), expected \(3, 64, 64\)"):
        check_scenes(data, 64, 3, "train split")
    with pytest.raises(DataFormatError, match="test split: img0.png has mask index 3, more than the 2 objects"):
        check_scenes(data, 16, 2, "test split")


def test_save_examples_writes_the_picture(tmp_path):
    torch.manual_seed(0)
    data = ImageSet(_scenes(n=4, size=16), 16)
    model = build_model(SPEC, "sa-mesh", 16)
    path = save_examples(model, data, tmp_path / "fig" / "examples.png", indices=[0, 2], title="sa-mesh")
    img = Image.open(path)
    # 2 images x 2 rows of (2 + 4 slots) panels of 96 px
    assert img.size[0] > 6 * 96 and 4 * 96 < img.size[1] < 5 * 96
    with pytest.raises(ValueError, match="indices"):
        save_examples(model, data, tmp_path / "x.png", indices=[4])
