"""The BNNeck classification head: outside CQT-Net's state dict, trainable, a plain CE at 0."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mirex_vi.config import MODEL_SIZES, FeatureConfig
from mirex_vi.model.cqtnet import CQTNet
from mirex_vi.model.packaging import write_package
from mirex_vi.model.weights import load_weights
from mirex_vi.train.heads import ClassificationHead, classification_loss


def test_head_is_not_part_of_the_exported_model(tmp_path):
    torch.manual_seed(0)
    model = CQTNet(MODEL_SIZES["mirex"])
    keys = set(model.state_dict())
    head = ClassificationHead(512, 300)
    assert set(model.state_dict()) == keys  # the authors' names (tests/test_model_weights.py)
    assert all(k.startswith(("front_end.", "proj.lin.")) for k in keys)
    assert not set(head.state_dict()) & set(model.state_dict())
    assert {n for n, _ in head.named_parameters()} == {"neck.weight", "neck.bias", "classifier.weight"}
    tiny = CQTNet(MODEL_SIZES["tiny"])
    tiny_head = ClassificationHead(16, 4)
    optimizer = torch.optim.SGD([*tiny.parameters(), *tiny_head.parameters()], lr=0.1)
    logits = tiny_head(tiny(torch.rand(4, 1, 84, 180)))
    classification_loss(logits, torch.tensor([0, 1, 2, 3]), 0.1).backward()
    optimizer.step()
    write_package(tmp_path / "pkg", tiny.state_dict(), tiny.cfg, FeatureConfig(), {}, "# t\n")
    loaded = load_weights(tmp_path / "pkg")  # a strict=True load of CQT-Net's keys
    for key, value in tiny.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


def test_loss_decreases_and_the_neck_bias_stays_zero():
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(16, 32), dim=1)
    labels = torch.arange(16) % 4
    head = ClassificationHead(32, 4)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(10):
        loss = classification_loss(head(emb), labels, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not head.neck.bias.requires_grad and torch.all(head.neck.bias == 0)
    assert head.classifier.bias is None


def test_label_smoothing():
    torch.manual_seed(2)
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(classification_loss(logits, labels), F.cross_entropy(logits, labels))
    eps = 0.2
    log_p = logits.log_softmax(dim=1)
    target = torch.full((8, 5), eps / 5).scatter_(1, labels[:, None], 1 - eps + eps / 5)
    torch.testing.assert_close(classification_loss(logits, labels, eps), -(target * log_p).sum(1).mean())
