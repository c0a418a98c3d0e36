"""Every script: --help works; every user mistake exits 2 with one line naming the key, option or path."""

from __future__ import annotations

import pytest

from .conftest import load_script, run_main, tiny_overrides

SCRIPTS = ["train", "evaluate", "predict", "inflate", "make_demo_data"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", [f"{name}.py", "--help"])  # make_demo_data reads sys.argv itself
    with pytest.raises(SystemExit) as info:
        main = load_script(name).main
        main() if name == "make_demo_data" else main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage:") and "--help" in out


@pytest.fixture
def files(tmp_path):
    unknown = tmp_path / "unknown_key.yaml"
    unknown.write_text("data:\n  clip_lenn: 4\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    return {"unknown": unknown, "broken": broken, "list": not_a_mapping, "nope": tmp_path / "nope"}


TRAIN_CASES = [
    # (arguments after --config demo.yaml --set <tiny overrides>, what the one line must name)
    (["--set", "train.epoch=3"], "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["--set", "trian.epochs=3"], "unknown key 'trian' (did you mean 'train'?)"),
    (["--set", "train.epochs"], "override 'train.epochs': expected KEY=VALUE"),
    (["--set", "train.batch_size=four"], "train.batch_size: must be int or one of ['auto'], got 'four'"),
    (["--set", "model.depths=3"], "model.depths: expected a list"),
    (["--set", "train.max_grad_norm=[1]"], "train.max_grad_norm: expected float"),
    (["--set", "data.clip_len=0"], "data.clip_len: must be > 0"),
    (["--set", "data.max_bad_fraction=1.5"], "data.max_bad_fraction: must be in [0, 1]"),
    (["--set", "data.decode_timeout=-1"], "data.decode_timeout: must be > 0"),
    (["--set", "optim.betas=[0.9,1.5]"], "optim.betas: expected two values in [0, 1)"),
    (["--set", "eval.views=4x2"], "eval.views: expected CLIPSxCROPS"),
    (["--set", "data.decoder=opencv"], "data.decoder: must be one of"),
    (["--set", "model.name=swin3d_x"], "model.name: unknown model 'swin3d_x'"),
    (["--set", "model.num_heads=[1]"], "model: depths"),
    (["--set", "data.train_annotations=NOPE/train.csv"], "data.train_annotations: file not found: NOPE/train.csv"),
    (["--set", "model.pretrained_video=NOPE/swin.pth"], "model.pretrained_video: file not found: NOPE/swin.pth"),
    (["--set", "data.classes=NOPE/classes.txt"], "data.classes: file not found: NOPE/classes.txt"),
]


@pytest.mark.parametrize("extra, words", TRAIN_CASES, ids=[w.split(":")[0][:40] for _, w in TRAIN_CASES])
def test_train_mistakes(tiny_data, tmp_path, capsys, files, extra, words):
    words = words.replace("NOPE", str(files["nope"]))
    extra = [a.replace("NOPE", str(files["nope"])) for a in extra]
    args = ["--config", "demo.yaml", "--set", *tiny_overrides(tiny_data, tmp_path / "run"), *extra[1:]]
    code, err, _ = run_main(capsys, "train", args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args, words", [
    ([], "the following arguments are required: --config"),
    (["--config", "demo.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "NOPE.yaml"], "config file not found: NOPE.yaml"),
    (["--config", "UNKNOWN"], "unknown key 'data.clip_lenn' (did you mean 'data.clip_len'?)"),
    (["--config", "BROKEN"], "invalid YAML"),
    (["--config", "LIST"], "config: expected a mapping"),
])
def test_train_usage_and_config_file_mistakes(capsys, files, args, words):
    subs = {"NOPE.yaml": str(files["nope"]) + ".yaml", "UNKNOWN": str(files["unknown"]), "BROKEN": str(files["broken"]),
            "LIST": str(files["list"])}
    args = [subs.get(a, a) for a in args]
    for key, value in subs.items():
        words = words.replace(key, value)
    code, err, _ = run_main(capsys, "train", args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_evaluate_predict_inflate_mistakes(tiny_checkpoint, tiny_data, tmp_path, capsys):
    path, sets = tiny_checkpoint
    nope = tmp_path / "nope"
    video = str(next(tiny_data.glob("val/*/*.mp4")))
    ev = ["--config", "demo.yaml", "--checkpoint"]
    out = str(tmp_path / "o.safetensors")
    cases = [
        ("evaluate", [*ev, str(nope), "--set", *sets], f"--checkpoint: file not found: {nope}"),
        ("evaluate", [*ev, str(path), "--views", "4", "--set", *sets], "--views: expected"),
        ("evaluate", [*ev, str(path), "--set", *sets, "eval.averge=prob"],
         "unknown key 'eval.averge' (did you mean 'eval.average'?)"),
        ("evaluate", [*ev, str(path), "--set", *sets, f"data.val_annotations={nope}"],
         f"data.val_annotations: file not found: {nope}"),
        ("evaluate", ["--checkpoint", str(path)], "the following arguments are required: --config"),
        ("predict", ["--checkpoint", str(nope), video], f"--checkpoint: file not found and not a registry name: {nope}"),
        ("predict", ["--checkpoint", str(path), "--top-k", "0", video], "--top-k: must be >= 1"),
        ("predict", ["--checkpoint", str(path), "--top-k", "many", video], "argument --top-k: invalid int value: 'many'"),
        ("predict", ["--checkpoint", str(path), "--classes", str(nope), video], f"--classes: file not found: {nope}"),
        ("predict", ["--checkpoint", str(path), "--config", str(nope), video], f"config file not found: {nope}"),
        ("predict", ["--checkpoint", str(path)], "the following arguments are required: PATH"),
        ("inflate", ["--image-checkpoint", str(nope), "--out", out], f"{nope}: checkpoint file not found"),
        ("inflate", ["--image-checkpoint", str(path), "--out", str(tmp_path / "o.pt")], "--out must end in .safetensors"),
        ("inflate", ["--image-checkpoint", str(path), "--out", out, "--temporal-init", "middle"],
         "argument --temporal-init: invalid choice: 'middle'"),
        ("inflate", ["--image-checkpoint", str(path), "--out", out, "--model", "swin3d_x"], "unknown model 'swin3d_x'"),
    ]
    for name, args, words in cases:
        code, err, _ = run_main(capsys, name, args)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (name, args, err)
