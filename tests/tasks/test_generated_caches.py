"""The generated-data loaders really go through the cache: a second call reads it without generating, and a
change of the generator's version (or, for the rendered sets, of the shared renderer's version) or of a
parameter regenerates. (Comparing two loads alone cannot tell, as the generators are deterministic.)"""
import numpy as np
import pytest
import torch

import tasks.clevr.data as clevr_data
import tasks.clevrer.data as clevrer_data
import tasks.clevrtex.data as clevrtex_data
import tasks.multi_dsprites.data as mds_data
import tasks.scenes.render as render_mod

# module, generator function name, loader call (cache_dir -> SceneData), uses the shared renderer
CASES = {
    "clevr": (clevr_data, "generate_clevr",
              lambda d, **kw: clevr_data.load_clevr("test", num_images=2, seed=1, cache_dir=d, progress=False, **kw),
              True),
    "clevrtex": (clevrtex_data, "generate_clevrtex",
                 lambda d, **kw: clevrtex_data.load_clevrtex("test", num_images=2, seed=1, cache_dir=d, progress=False,
                                                             **kw), True),
    "clevrer": (clevrer_data, "generate_clevrer",
                lambda d, **kw: clevrer_data.load_clevrer("S", "test", num_videos=2, seed=1, cache_dir=d,
                                                          progress=False, **kw), True),
    "multi_dsprites": (mds_data, "generate_multi_dsprites",
                       lambda d, **kw: mds_data.load_multi_dsprites("test", num_images=2, seed=1, cache_dir=d,
                                                                    progress=False, **kw), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_loader_reads_the_cache_and_rebuilds_on_version_change(name, tmp_path, monkeypatch):
    module, gen_name, load, rendered = CASES[name]
    real_gen = getattr(module, gen_name)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real_gen(*args, **kwargs)

    monkeypatch.setattr(module, gen_name, counting)
    first = load(tmp_path)
    assert len(calls) == 1
    second = load(tmp_path)
    assert len(calls) == 1, "the second load generated again instead of reading the cache"
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    # Another seed is another entry.
    if name == "clevrer":
        clevrer_data.load_clevrer("S", "test", num_videos=2, seed=2, cache_dir=tmp_path, progress=False)
    else:
        getattr(module, {"clevr": "load_clevr", "clevrtex": "load_clevrtex",
                         "multi_dsprites": "load_multi_dsprites"}[name])("test", num_images=2, seed=2,
                                                                          cache_dir=tmp_path, progress=False)
    assert len(calls) == 2
    monkeypatch.setattr(module, "GENERATOR_VERSION", module.GENERATOR_VERSION + "-test")
    load(tmp_path)
    assert len(calls) == 3, "a new generator version did not regenerate"
    if rendered:
        monkeypatch.setattr(render_mod, "RENDER_VERSION", render_mod.RENDER_VERSION + "-test")
        load(tmp_path)
        assert len(calls) == 4, "a new renderer version did not regenerate"
    assert len(list(tmp_path.glob("*.npz"))) == len(calls)
    assert np.array_equal(load(tmp_path).images.numpy(), first.images.numpy())  # same bytes, fresh entry
