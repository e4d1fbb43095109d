"""A perceptron ReLU(w·x + b), then a layer of two. Run: python examples/02_perceptron.py"""
import numpy as np

import fusegrad as fg
import fusegrad.nn.functional as F


def neuron(w, b, x):
    return F.relu(fg.tensor(w) @ fg.tensor(x) + b).item()


def main():
    res = {
        "x10": neuron([0.1, 0.2], 0.05, [1.0, 0.0]),             # 0.15
        "x01": neuron([0.1, 0.2], 0.05, [0.0, 1.0]),             # 0.25
        "three": neuron([0.8, 0.2, 0.5], 0.1, [1.0, 0.5, 0.3]),  # 1.15
    }
    layer = fg.nn.Linear(2, 2, bias=False)
    with fg.no_grad():
        layer.weight.copy_(np.array([[0.1, 0.2], [0.3, 0.4]]))
    res["layer"] = F.relu(layer(fg.tensor([1.0, 0.0]))).data.tolist()  # [0.1, 0.3]
    for k, v in res.items():
        print(f"{k:6s} -> {np.round(v, 4)}")
    return res


if __name__ == "__main__":
    main()
