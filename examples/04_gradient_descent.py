"""Gradient-descent updates W <- W - lr * dJ/dW, by hand and with fusegrad.optim.SGD.
Run: python examples/04_gradient_descent.py

It prints a weight, its gradient and the weight after one step at learning rate 0.1, first
for one number, then for a 2x2 matrix. Notice: a negative gradient makes the weight grow, and
each entry of the matrix moves by its own gradient times the learning rate.
"""
import numpy as np

import fusegrad as fg


def sgd_update(w, grad, lr):
    p = fg.nn.Parameter(np.array(w, dtype=np.float32))
    p.grad = fg.tensor(np.array(grad, dtype=np.float32))
    fg.optim.SGD([p], lr=lr).step()
    return p.data.tolist()


CASES = {"scalar": (0.5, -0.3),                                               # 0.53
         "matrix": ([[0.1, 0.2], [0.3, 0.4]], [[-0.5, -0.3], [-0.2, -0.1]])}   # [[.15,.23],[.32,.41]]


def main():
    res = {}
    for name, (w, g) in CASES.items():
        res[name] = sgd_update(w, g, 0.1)
        print(f"{name}: weight {w}, gradient {g} -> after W - 0.1 * gradient: {np.round(res[name], 4).tolist()}")
    print("notice: every gradient here is negative, so every weight grows, each by 0.1 x its own gradient")
    return res


if __name__ == "__main__":
    main()
