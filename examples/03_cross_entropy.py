"""Cross-entropy of predicted probabilities against the true class: -log p[target].
Run: python examples/03_cross_entropy.py

It prints the loss of two predictions for the same true class (class 2): one that gives it
probability 0.6, one that gives it 0.05. Notice: the confident wrong prediction costs about 6x
more, and only the probability of the true class enters the loss.
"""
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
    print(f"true class 2 given probability 0.6 (confident and right):  loss -log 0.6  = {res['confident_right']:.3f}")
    print(f"true class 2 given probability 0.05 (confident and wrong): loss -log 0.05 = {res['confident_wrong']:.3f}")
    print(f"notice: being confidently wrong costs {res['confident_wrong'] / res['confident_right']:.1f}x more")
    return res


if __name__ == "__main__":
    main()
