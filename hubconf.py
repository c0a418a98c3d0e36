"""Entry points for ``torch.hub.load``: every preset of ``video_swin.list_models()``.

    model = torch.hub.load("<owner>/video-swin", "swin3d_t", pretrained="k400")
    model = torch.hub.load("path/to/video-swin", "swin3d_t", source="local", num_classes=10)

Each entry point is ``video_swin.create_model`` for its preset: ``pretrained``
(True, a tag such as "k400", or a "MODEL.TAG" name) and ``num_classes`` as there.
"""

dependencies = ["torch", "torchvision", "einops", "safetensors", "omegaconf"]


def _entry(name):
    def build(pretrained=None, num_classes=None, **overrides):
        from video_swin import create_model

        return create_model(name, num_classes, pretrained=pretrained, **overrides)

    build.__name__ = name
    build.__doc__ = f"``video_swin.create_model({name!r}, num_classes, pretrained=..., **overrides)``."
    return build


def _register():
    from video_swin import list_models

    for name in list_models():
        globals()[name] = _entry(name)


_register()
