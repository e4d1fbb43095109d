"""Gradient-descent updates W <- W - lr * dJ/dW, by hand and with fusegrad.optim.SGD.
Run: python examples/04_gradient_descent.py"""
import numpy as np

import fusegrad as fg


def sgd_update(w, grad, lr):
    p = fg.nn.Parameter(np.array(w, dtype=np.float32))
    p.grad = fg.tensor(np.array(grad, dtype=np.float32))
    fg.optim.SGD([p], lr=lr).step()
    return p.data.tolist()


def main():
    res = {"scalar": sgd_update(0.5, -0.3, 0.1),                                                    # 0.53
           "matrix": sgd_update([[0.1, 0.2], [0.3, 0.4]], [[-0.5, -0.3], [-0.2, -0.1]], 0.1)}   # [[.15,.23],[.32,.41]]
    for k, v in res.items():
        print(f"{k}: {np.round(v, 4).tolist()}")
    return res


if __name__ == "__main__":
    main()
