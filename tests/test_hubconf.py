"""hubconf.py: torch.hub.load finds every preset and builds it as create_model does (local source, no network)."""

from pathlib import Path

import torch

import video_swin

REPO = Path(__file__).resolve().parents[1]


def test_torch_hub_lists_and_loads_the_presets():
    # torch.hub.list reads a repository from GitHub only; a local one is listed by loading hubconf itself
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")} == set(video_swin.list_models())
    torch.manual_seed(0)
    model = torch.hub.load(str(REPO), "swin3d_t", source="local", num_classes=7, embed_dim=16,
                           depths=(1, 1), num_heads=(1, 2), window_size=(2, 4, 4))  # fmt: skip
    torch.manual_seed(0)
    expected = video_swin.create_model("swin3d_t", 7, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                       window_size=(2, 4, 4))  # fmt: skip
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected.eval()(x))
    assert model.config == expected.config
