"""Hand-written LoRA: identity at init, scaling, merge, injection into every encoder type."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_multimodal import make_dataset, make_encoders
from train.engine.batches import Collate
from train.methods.base import DatasetInfo
from train.modules.lora import LoRALinear, inject_lora, lora_modules


def test_starts_as_identity_and_dropout_only_touches_the_update() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    lora = LoRALinear(base, rank=2, alpha=1.0, dropout=0.5)
    assert torch.count_nonzero(lora.lora_B) == 0 and torch.count_nonzero(lora.lora_A) > 0
    x = torch.randn(3, 5, 6)
    for mode in (True, False):  # train mode: dropout is on the LoRA path only, and B = 0
        lora.train(mode)
        assert torch.equal(lora(x), base(x))
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_update_scaling_and_merge() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    lora = LoRALinear(base, rank=2, alpha=3.0).eval()
    nn.init.normal_(lora.lora_B)
    x = torch.randn(5, 6)
    expected = base(x) + 1.5 * x @ lora.lora_A.T @ lora.lora_B.T
    torch.testing.assert_close(lora(x), expected)
    torch.testing.assert_close(lora.merged()(x), lora(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="already adapted"):
        LoRALinear(lora)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_modalities", [3])
def test_inject_into_every_encoder_type_keeps_outputs(num_modalities: int) -> None:
    data = make_dataset(num_modalities)
    info = DatasetInfo.from_dataset(data)
    encoders = make_encoders(info)
    batch = Collate(info.modalities, info.task, info.num_classes)(data.split("test")[:4])
    for m, enc in encoders.items():
        enc.eval()
        inputs = batch.modalities[m].inputs
        before = enc(inputs)
        added = inject_lora(enc, rank=1, alpha=1.0, dropout=0.1, targets=("q", "k", "v", "o"))
        assert len(added) == 4 * enc.num_layers == len(lora_modules(enc))
        assert all(isinstance(p, LoRALinear) for row in enc.attention_projections() for p in row.values())
        assert torch.equal(enc(inputs), before), m
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        inject_lora(encoders["image"], targets=("query",))
