"""The notebook's training loop: AdamW, clipping at 10, cosine per epoch."""

from __future__ import annotations

import math

import torch


def collate_fn(batch):
    """Images are stacked; boxes and labels stay lists (the notebook's collate)."""
    imgs, boxes, labels = zip(*batch)
    imgs = torch.stack(imgs, dim=0)
    targets = torch.zeros(len(imgs))
    return imgs, targets, list(boxes), list(labels)


def cosine_lr(lr0: float, epoch: int, num_epochs: int) -> float:
    """``CosineAnnealingLR(T_max=num_epochs)`` stepped once per epoch: epoch e's lr."""
    return lr0 * (1 + math.cos(math.pi * epoch / num_epochs)) / 2


def train_one_epoch(model, dataloader, optimizer, loss_fn, device, epoch, *, log_every=2,
                    on_step=None, max_norm=10.0):
    """One epoch of the notebook's loop; returns the mean of each loss part.

    ``on_step(batch_idx, loss_dict)``, if given, is called after every optimizer step.
    """
    model.train()
    epoch_losses = {"cls_loss": 0, "box_loss": 0, "dfl_loss": 0, "total_loss": 0}
    for batch_idx, (imgs, _targets, boxes_list, labels_list) in enumerate(dataloader):
        imgs = imgs.to(device)
        gt_boxes = [b.to(device) for b in boxes_list]
        gt_labels = [lab.to(device) for lab in labels_list]

        predictions = model(imgs)
        loss, loss_dict = loss_fn(predictions, gt_boxes, gt_labels)

        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
        optimizer.step()

        for k in epoch_losses:
            epoch_losses[k] += loss_dict[k]
        if on_step is not None:
            on_step(batch_idx, loss_dict)
        if log_every and batch_idx % log_every == 0:
            print(f"  Batch {batch_idx}: loss={loss_dict['total_loss']:.4f} "
                  f"(cls={loss_dict['cls_loss']:.4f}, box={loss_dict['box_loss']:.4f}, "
                  f"dfl={loss_dict['dfl_loss']:.4f}, pos={loss_dict['num_pos']})")
    n = len(dataloader)
    return {k: v / n for k, v in epoch_losses.items()}
