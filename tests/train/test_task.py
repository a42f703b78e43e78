from __future__ import annotations

import torch

from metadino.config import config_from_dict
from metadino.data.batch import Batch
from metadino.losses import SIGReg
from metadino.train.factory import build_backbone_from_config, build_task
from testkit import tiny_config


def _batch(n_global=2, n_local=2, B=4, C=3, G=32, L=16, N=16):
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n_global * B, N, dtype=torch.bool)
    masks[::2, :5] = True
    return Batch(
        global_crops=torch.randn(n_global * B, C, G, G, generator=g),
        local_crops=torch.randn(n_local * B, C, L, L, generator=g),
        masks=masks,
    )


def _task(image_table, **ssl):
    cfg = config_from_dict(tiny_config(image_table, ssl=ssl, model={"drop_path_rate": 0.0}))
    torch.manual_seed(0)
    return build_task(cfg, build_backbone_from_config(cfg.model, image_size=32)).train()


def test_sigreg_term_matches_reference_formula_and_replaces_koleo(image_table):
    task = _task(image_table, sigreg={"weight": 0.05})
    batch = _batch()
    terms = task.training_step(batch, teacher_temp=0.07, step=7).terms
    assert "koleo" not in terms and "sigreg" in terms
    out = task.student(batch.global_crops, batch.local_crops, batch.masks, mask_inputs=True)
    bottleneck = out["bottleneck"].view(2, 4, -1)
    ref = SIGReg()
    expected = 2 * 0.5 * (ref(bottleneck[0], seed_step=7) + ref(bottleneck[1], seed_step=7))
    torch.testing.assert_close(terms["sigreg"], expected)
    others = terms["dino"] + terms["ibot"]
    torch.testing.assert_close(terms["total"], others + 0.05 * terms["sigreg"])


def test_sigreg_with_koleo_too(image_table):
    terms = _task(image_table, sigreg={"weight": 0.05, "koleo_too": True}).training_step(_batch(), teacher_temp=0.07, step=0).terms
    assert "koleo" in terms and "sigreg" in terms


def test_every_trainable_parameter_gets_a_finite_gradient_and_teacher_none(image_table):
    task = _task(image_table)
    terms = task.training_step(_batch(), teacher_temp=0.07).terms
    terms["total"].backward()
    for name, p in task.student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in task.teacher.parameters())


def test_a_bf16_step_gives_the_terms_and_gradients_of_fp32_copies_of_the_ibot_logits(image_table, monkeypatch):
    """The iBOT logits reach Sinkhorn-Knopp and the iBOT loss in bf16 (each upcasts inside, without a full fp32 copy):
    every loss term and every gradient equals, bit for bit, a step that hands them `.float()` copies."""
    import metadino.train.task as task_module

    def step(copies: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        task = _task(image_table).train()
        if copies:
            sinkhorn, ibot = task_module.sinkhorn_knopp, task.ibot_loss.forward
            monkeypatch.setattr(task_module, "sinkhorn_knopp", lambda x, t, **k: sinkhorn(x.float(), t, **k))
            monkeypatch.setattr(task.ibot_loss, "forward", lambda x, *a, **k: ibot(x.float(), *a, **k))
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = task.training_step(_batch(), teacher_temp=0.07)
        out.loss.backward()
        monkeypatch.undo()
        return ({k: v.detach() for k, v in out.terms.items()},
                {n: p.grad for n, p in task.named_parameters() if p.grad is not None})

    (terms, grads), (ref_terms, ref_grads) = step(False), step(True)
    assert terms["ibot"] > 0 and terms.keys() == ref_terms.keys() and grads.keys() == ref_grads.keys()
    for k in terms:
        assert torch.equal(terms[k], ref_terms[k]), k
    for n in grads:
        assert torch.equal(grads[n], ref_grads[n]), n
