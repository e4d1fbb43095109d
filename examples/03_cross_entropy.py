"""Cross-entropy of predicted probabilities against the true class: -log p[target].
Run: python examples/03_cross_entropy.py"""
import numpy as np

import fusegrad as fg
import fusegrad.nn.functional as F


def ce(probs, target):
    # cross_entropy takes logits; log-probabilities are valid logits (softmax(log p) = p)
    logits = fg.tensor(np.log(np.array([probs], dtype=np.float32)))
    return F.cross_entropy(logits, fg.tensor([target])).item()


def main():
    res = {"confident_right": ce([0.1, 0.2, 0.6, 0.1], 2),     # 0.511
           "confident_wrong": ce([0.8, 0.1, 0.05, 0.05], 2)}   # 2.996
    for k, v in res.items():
        print(f"{k}: {v:.3f}")
    return res


if __name__ == "__main__":
    main()
