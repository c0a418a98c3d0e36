"""Export: torch.export programs and ONNX files (onnxruntime) give the eager model's outputs, any batch size."""

import importlib.util

import pytest
import torch

import video_swin
from video_swin.checkpoints import save_checkpoint
from video_swin.cli import main
from video_swin.export import check_export, export_model, run_exported
from video_swin.models.kernels import accelerate_cpu, is_accelerated

SMALL = {"embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4), "num_classes": 5}
ONE_STAGE = {"depths": (2,), "num_heads": (2,)}
# preset, overrides, example input: every case has shifted blocks and maps padded to the window
CASES = {
    "3d_v1": ("swin3d_t", {"window_size": (2, 3, 3)}, (1, 3, 5, 36, 44)),
    "2d_v1": ("swin_t", {"window_size": (3, 3), **ONE_STAGE}, (1, 3, 40, 52)),
    "3d_v2": ("swinv2_3d_t", {"window_size": (2, 3, 3)}, (1, 3, 4, 32, 40)),
}


def small_model(name, overrides):
    """Random weights in which every part matters (V2's res-post-norms start at zero, making blocks identities)."""
    torch.manual_seed(0)
    model = video_swin.create_model(name, **{**SMALL, **overrides})
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" in key and key.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.add_(0.05 * torch.randn_like(p))
    return model


def assert_equal_to_eager(model, path, shape):
    model.eval()
    for batch in (1, 3):
        x = torch.randn(batch, *shape[1:])
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(run_exported(path, x), expected, rtol=1e-4, atol=1e-5, msg=f"batch {batch}")


@pytest.mark.parametrize("case", list(CASES))
def test_program_equals_eager_on_batch_1_and_3(case, tmp_path):
    name, overrides, shape = CASES[case]
    model = small_model(name, overrides)
    if case == "3d_v1":  # what the caller holds is left as it was: fast paths, training mode, gradients
        accelerate_cpu(model).train()
    program = export_model(model, "pt2", shape, path=tmp_path / "model.pt2")
    assert isinstance(program, torch.export.ExportedProgram)
    if case == "3d_v1":
        assert is_accelerated(model) and model.training and all(p.requires_grad for p in model.parameters())
    assert_equal_to_eager(model, tmp_path / "model.pt2", shape)


@pytest.mark.slow  # the dynamo ONNX exporter takes 30-60 s for each of these tiny models on 2 CPUs
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_equals_eager_on_batch_1_and_3(case, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    name, overrides, shape = CASES[case]
    model = small_model(name, overrides)
    export_model(model, "onnx", shape, path=tmp_path / "model.onnx")
    proto = onnx.load(tmp_path / "model.onnx")
    assert proto.opset_import[0].version >= 17
    (input_,) = proto.graph.input
    assert input_.name == ("video" if len(shape) == 5 else "image")
    assert input_.type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch
    assert_equal_to_eager(model, tmp_path / "model.onnx", shape)


def test_bad_format_or_input_shape_raises():
    model = small_model("swin3d_t", {"window_size": (2, 3, 3)})
    with pytest.raises(ValueError, match="'onnx', 'pt2'"):
        export_model(model, "tflite", (1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        export_model(model, "pt2", (1, 3, 32, 32))


def test_cli_writes_a_program_that_matches_the_weights(tmp_path, capsys):
    model = small_model("swin3d_t", {"window_size": (2, 3, 3), **ONE_STAGE})
    weights = save_checkpoint(model, tmp_path / "small.safetensors")
    out = tmp_path / "exported" / "small.pt2"
    args = ["export", "--weights", str(weights), "--format", "pt2", "--clip", "5x36x44", "--out", str(out), "--check"]
    assert main(args) == 0  # --check: batch 1 and 3 within 1e-3 of the eager model, else exit code 1
    printed = capsys.readouterr().out
    assert f"wrote {out} (input Bx3x5x36x44)" in printed and "checked:" in printed
    assert check_export(model, out, (2, 3, 5, 36, 44), batch_sizes=(2,)) < 1e-5


def test_cli_help_and_usage_mistakes(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["export", "--help"])
    assert done.value.code == 0 and "--format {onnx,pt2}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["export", "--weights", "swin3d_t.k400", "--format", "tflite"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "invalid choice: 'tflite'" in err
    official = tmp_path / "official.pth"
    torch.save({"state_dict": {}}, official)
    ours = save_checkpoint(small_model("swin3d_t", {}), tmp_path / "small.safetensors")
    for args, message in [
        (["--weights", str(tmp_path / "missing.pth")], "not a registry name"),
        (["--weights", str(official)], "--model"),
        (["--weights", str(ours), "--batch", "none"], "--batch"),
        (["--weights", str(ours), "--clip", "4x32xl"], "--clip: expected sizes"),
        (["--weights", str(ours), "--clip", "32x224"], "--clip: swin3d_t takes TxHxW"),
    ]:
        assert main(["export", "--format", "pt2", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_onnx_without_its_packages_is_a_one_line_usage_error(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    weights = save_checkpoint(small_model("swin3d_t", {}), tmp_path / "small.safetensors")
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs onnxscript" in err and "video-swin[export]" in err
    assert not (tmp_path / "m.onnx").exists()
