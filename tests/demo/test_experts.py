"""Expert teachers: trained with open_clip, saved as local-dir, loaded back through the teacher loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkd.demo.corpus import make_batch
from mmkd.demo.experts import (
    ExpertSpec,
    clip_config,
    save_expert,
    teacher_spec,
    to_tensor,
    train_expert,
    zeroshot_accuracy,
)

TINY = clip_config(width=32, layers=1, embed_dim=32, text_width=32, text_layers=1, context_length=24)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_saved_expert_loads_through_the_teacher_loader_with_the_same_outputs(tmp_path) -> None:
    import open_clip

    from mmkd.config import load_pipelines
    from mmkd.data.images import decode_image
    from mmkd.teachers import get_teacher_spec, load_teacher
    from mmkd.teachers.tiny import write_pipelines

    spec = ExpertSpec("demo_expert", ("fundus",), model_cfg=TINY, n_per_class=8, steps=3, batch_size=16)
    model = train_expert(spec)
    folder = save_expert(model, tmp_path / "expert", spec)
    write_pipelines(tmp_path / "pipelines.yaml", {"demo_expert": teacher_spec("demo_expert", folder, spec)})
    teacher = load_teacher(get_teacher_spec("demo_expert", load_pipelines(tmp_path / "pipelines.yaml")))

    batch = make_batch(("fundus",), 2, seed=9)
    import io

    from PIL import Image

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return decode_image(buf.getvalue())

    pixels = torch.stack([teacher.preprocess(png(a)) for a in batch.images])
    got_img = teacher.encode_images(pixels).numpy()
    got_txt = teacher.encode_texts(batch.captions).numpy()
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=24)
    with torch.inference_mode():
        want_img = torch.nn.functional.normalize(model.encode_image(to_tensor(batch.images)), dim=-1).numpy()
        want_txt = torch.nn.functional.normalize(model.encode_text(tok(batch.captions)), dim=-1).numpy()
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(norm(got_img), want_img, atol=1e-4)
    np.testing.assert_allclose(norm(got_txt), want_txt, atol=1e-4)
    assert teacher.dim == 32


def test_expert_learns_its_modality_and_not_the_others() -> None:
    spec = ExpertSpec("derm", ("dermoscopy",), model_cfg=TINY, n_per_class=60, steps=60, batch_size=64, lr=3e-3,
                      warmup=10)
    model = train_expert(spec)
    held_out = make_batch(("dermoscopy", "fundus"), 20, seed=77)
    own, other = zeroshot_accuracy(model, "dermoscopy", held_out), zeroshot_accuracy(model, "fundus", held_out)
    assert own >= 0.6, own
    assert own > other + 0.2, (own, other)


def test_zeroshot_check_needs_samples_of_the_modality() -> None:
    spec = ExpertSpec("x", ("xray",), model_cfg=TINY, n_per_class=2, steps=1, batch_size=4)
    model = train_expert(spec)
    with pytest.raises(ValueError, match="no 'fundus' samples"):
        zeroshot_accuracy(model, "fundus", make_batch(("xray",), 2, seed=0))
