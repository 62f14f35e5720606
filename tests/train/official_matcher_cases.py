"""Writes Hungarian matcher cases with the reference cost and assignment, for
criterion_test's MatcherParity tests.

Usage: official_matcher_cases.py OUT_FILE

The cost is the official Relation-DETR matcher's, written with the same torch
operations in the same order (float32, sigmoid focal class cost, cdist p=1,
torchvision's generalized_box_iou of the xyxy boxes), and the assignment is
scipy.optimize.linear_sum_assignment on it. File layout: the line
"MATCHERCASES 1 <torch version> <torch threads>", then per case a line
"name Q C N" followed by little-endian arrays: logits float32 [Q, C], boxes
float32 [Q, 4] (cxcywh), target boxes float32 [N, 4], labels int64 [N], cost
float32 [Q, N], and scipy's row and column indices, int64 [min(Q, N)] each.
"""

import sys

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

ALPHA, GAMMA = 0.25, 2.0
COST_CLASS, COST_BBOX, COST_GIOU = 2, 5, 2


def cxcywh_to_xyxy(boxes):
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def generalized_box_iou(boxes1, boxes2):
    """torchvision.ops.generalized_box_iou (torchvision is not installed here)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    iou = inter / union
    lti = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rbi = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    whi = (rbi - lti).clamp(min=0)
    areai = whi[:, :, 0] * whi[:, :, 1]
    return iou - (areai - union) / areai


@torch.no_grad()
def matcher_cost(logits, boxes, labels, target_boxes):
    prob = logits.sigmoid()
    neg = -(1 - ALPHA) * prob**GAMMA * (1 - prob + 1e-6).log()
    pos = -ALPHA * (1 - prob)**GAMMA * (prob + 1e-6).log()
    cost_class = pos[:, labels] - neg[:, labels]
    cost_bbox = torch.cdist(boxes, target_boxes, p=1)
    cost_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
    return COST_BBOX * cost_bbox + COST_CLASS * cost_class + COST_GIOU * cost_giou


def make_case(generator, queries, classes, targets, tile, near):
    """Random outputs; with `near`, the predicted boxes jitter around the
    targets (close costs, as late in training)."""
    labels = torch.randint(0, classes, (targets,), generator=generator)
    target_boxes = torch.rand(targets, 4, generator=generator) * 0.5 + 0.05
    logits = torch.randn(queries, classes, generator=generator) * 2 - 4
    if near:
        owner = torch.randint(0, targets, (queries,), generator=generator)
        boxes = target_boxes[owner] + 0.02 * torch.randn(queries, 4, generator=generator)
        boxes = boxes.clamp(0.01, 0.99)
    else:
        boxes = torch.rand(queries, 4, generator=generator) * 0.5 + 0.05
    return logits, boxes, labels.repeat(tile), target_boxes.repeat(tile, 1)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    generator = torch.Generator().manual_seed(20240611)
    cases = [("q900_n50", 900, 91, 50, 1, False), ("q900_n7_near", 900, 91, 7, 1, True),
             ("q900_n40_near", 900, 91, 40, 1, True), ("q300_n3", 300, 6, 3, 1, False),
             ("hybrid_q1500_n50x6", 1500, 91, 50, 6, True), ("q10_n25", 10, 91, 25, 1, False)]
    with open(sys.argv[1], "wb") as out:
        out.write(f"MATCHERCASES 1 {torch.__version__} {torch.get_num_threads()}\n".encode())
        for name, queries, classes, targets, tile, near in cases:
            logits, boxes, labels, target_boxes = make_case(
                generator, queries, classes, targets, tile, near)
            cost = matcher_cost(logits, boxes, labels, target_boxes)
            rows, cols = linear_sum_assignment(cost.cpu())
            out.write(f"{name} {queries} {classes} {labels.numel()}\n".encode())
            for array in (logits, boxes, target_boxes):
                out.write(array.numpy().astype("<f4").tobytes())
            out.write(labels.numpy().astype("<i8").tobytes())
            out.write(cost.numpy().astype("<f4").tobytes())
            out.write(rows.astype("<i8").tobytes())
            out.write(cols.astype("<i8").tobytes())
    print(f"wrote {len(cases)} matcher cases to {sys.argv[1]}")


if __name__ == "__main__":
    main()
