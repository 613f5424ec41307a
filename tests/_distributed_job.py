"""The work tests/test_distributed.py runs in one process and under
``torchrun --nproc_per_node=2`` (gloo, CPU): ``python _distributed_job.py OUT``
saves each rank's results to ``OUT/rank<r>.pt`` (and uses folders in ``OUT``
as cache_dir and checkpoint_dir)."""

import sys
from pathlib import Path

import numpy as np
import torch
from _images import pattern_images

import spice_learn.embedding
import spice_learn.pretrain
import spice_learn.spice_semi
from spice_learn import SpiceClustering, distributed
from spice_learn.cache_augment import strong_transform, weak_transform
from spice_learn.backbones import build_backbone
from spice_learn.embedding import embed_views
from spice_learn.heads import MultiHeadClassifier
from spice_learn.pretrain import (
    ProjectionHead,
    SimCLRNet,
    contrastive_loss,
    pretrain_simclr,
)
from spice_learn.spice_semi import finetune
from spice_learn.view_cache import ViewSettings, build_view_cache

CPU = torch.device("cpu")


def _weights(*modules):
    return [v.detach().clone() for m in modules for v in m.state_dict().values()]


def gradient_of_one_step():
    """Parameter gradients of one NT-Xent step on a global batch of 8 views."""
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    torch.manual_seed(0)
    net = SimCLRNet(extractor.module.train().requires_grad_(True),
                    ProjectionHead(extractor.feature_dim, 8))
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 12, 12, generator=gen) for _ in range(2)]
    lo, hi = distributed.shard_range(8)
    with distributed.synced_batchnorm(net, CPU) as synced:
        ddp = distributed.wrap_ddp(synced, CPU)
        loss = contrastive_loss(ddp, [v[lo:hi] for v in views], 0.5)
        loss.backward()
    return {"loss": loss.detach(), "grads": [p.grad.clone() for p in net.parameters()],
            "running": _weights(net)}


def pretraining():
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    history = pretrain_simclr(
        extractor, pattern_images(), max_epochs=3, max_time=None, batch_size=32,
        learning_rate=3e-3, temperature=0.5, projection_dim=16, flip=False, seed=0, device=CPU)
    return {"history": history, "weights": _weights(extractor.module)}


def finetuning():
    images = pattern_images(n=32, seed=1)
    labels = np.arange(32) % 4
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    head = MultiHeadClassifier(1, extractor.feature_dim, 16, 4,
                               generator=torch.Generator().manual_seed(0))
    history = finetune(extractor, head, images, labels, np.arange(32) % 3 > 0, n_steps=6,
                       batch_size=6, mu=2, threshold=0.3, learning_rate=0.05, ema_decay=0.0,
                       flip=False, seed=2, device=CPU)
    return {"history": history, "weights": _weights(extractor.module, head)}


def embedding():
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    transforms = [None, weak_transform((12, 12), flip=False),
                  strong_transform((12, 12), flip=False)]
    return {"views": embed_views(extractor, pattern_images(n=40), transforms, batch_size=16,
                                 device=CPU, seed=3)}


def estimator():
    model = SpiceClustering(
        4, pretrain_epochs=2, pretrain_batch_size=32, projection_dim=16, n_heads=2,
        max_epochs=3, n_weak_views=1, n_strong_views=1, semi="finetune", semi_steps=4,
        semi_batch_size=8, semi_mu=2, reliability_threshold=0.5, n_neighbors=5,
        embed_batch_size=32, random_state=0, device="cpu",  # gloo, also beside a GPU
        # Rounding differences between DDP and one process grow with the learning rate;
        # the labels of 48 random patterns are compared at the gentler 1e-3.
        pretrain_learning_rate=1e-3, temperature=0.5,
        # Random patterns have no clusters to find: the labels follow rounding closely,
        # and these settings were checked to agree on >= 90 % with heads of width D.
        hidden_dim=None,
    ).fit(pattern_images(n=48, size=16, seed=2))
    return {"labels": model.labels_, "pretrain_history": model.pretrain_history_,
            "backbone": _weights(model.backbone_.module),
            "classifier": _weights(model.classifier_),
            "predict": model.predict(pattern_images(n=20, size=16, seed=3))}


def misuse():
    """Errors raised in every process (none would wait for the others forever)."""
    images = pattern_images(n=8, seed=distributed.rank())  # other images in each process
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    raised = {}
    try:
        embed_views(extractor, images, [None], batch_size=4, device=CPU)
        raised["other_images"] = False
    except ValueError as error:
        raised["other_images"] = "every process must pass the same images" in str(error)
    raised["semi_batch_size"] = False
    if distributed.is_distributed():  # raised before any image is read
        try:
            SpiceClustering(4, backbone=extractor.module, semi="finetune", semi_batch_size=1,
                            random_state=0, device="cpu").fit(images)
        except ValueError as error:
            raised["semi_batch_size"] = "semi_batch_size must be at least" in str(error)
    return {key: torch.tensor(value) for key, value in raised.items()}


def caches(folder):
    """View cache in ``cache_dir`` (written by rank 0, then read by all) and
    pretraining resumed from ``checkpoint_dir``, twice each."""
    folder = Path(folder)
    extractor = build_backbone("spice_convnet4", None, (12, 12), seed=0)
    views = ViewSettings(1, 1, "float32", embed_batch_size=16, cache_dir=folder / "views")
    out = {}
    for run in range(2):
        built = build_view_cache(extractor, pattern_images(n=40), views, flip=False, seed=5,
                                 device=CPU)
        cache, embedded = built.cache, built.embedded
        out[f"views{run}"] = [cache.original[:], cache.weak[0][:], cache.strong[0][:]]
        out[f"embedded{run}"] = torch.tensor(embedded)
        history = pretrain_simclr(
            build_backbone("spice_convnet4", None, (12, 12), seed=0), pattern_images(n=32),
            max_epochs=1, max_time=None, batch_size=16, learning_rate=3e-3, temperature=0.5,
            projection_dim=8, flip=False, seed=0, device=CPU, checkpoint_dir=folder / "ckpt")
        out[f"history{run}"] = torch.tensor(history)
    return out


def float32_only():
    """No bfloat16 autocast (CPUs with AVX512-BF16 or AMX would use it): with
    bfloat16 rounding the runs would agree only to about 1e-2, and Adam's first
    steps, ``lr * sign(gradient)``, flip on that noise."""
    for module in (spice_learn.embedding, spice_learn.pretrain, spice_learn.spice_semi):
        module.autocast_dtype = lambda *args, **kwargs: None


def run_all(folder):
    torch.set_num_threads(1)
    float32_only()
    return {"world_size": distributed.world_size(), "gradient": gradient_of_one_step(),
            "pretraining": pretraining(), "finetuning": finetuning(),
            "embedding": embedding(), "estimator": estimator(), "misuse": misuse(),
            "caches": caches(folder)}


if __name__ == "__main__":
    distributed.setup(CPU)  # joins the gloo group that torchrun describes
    results = run_all(sys.argv[1])
    torch.save(results, f"{sys.argv[1]}/rank{distributed.rank()}.pt")
