"""A perceptron ReLU(w·x + b), then a layer of two. Run: python examples/02_perceptron.py

It prints each neuron's weights w, bias b, input x and output ReLU(w·x + b), then the outputs
of a two-neuron layer (no bias). Notice: each input picks out the weights it multiplies (x =
[1, 0] gives w[0] + b), and the bias is added whatever the input.
"""
import numpy as np

import fusegrad as fg
import fusegrad.nn.functional as F


def neuron(w, b, x):
    return F.relu(fg.tensor(w) @ fg.tensor(x) + b).item()


CASES = {"x10": ([0.1, 0.2], 0.05, [1.0, 0.0]),              # 0.15
         "x01": ([0.1, 0.2], 0.05, [0.0, 1.0]),              # 0.25
         "three": ([0.8, 0.2, 0.5], 0.1, [1.0, 0.5, 0.3])}   # 1.15


def main():
    res = {}
    for name, (w, b, x) in CASES.items():
        res[name] = neuron(w, b, x)
        print(f"neuron: weights w = {w}, bias b = {b}, input x = {x} -> ReLU(w·x + b) = {res[name]:.4f}")
    layer = fg.nn.Linear(2, 2, bias=False)
    with fg.no_grad():
        layer.weight.copy_(np.array([[0.1, 0.2], [0.3, 0.4]]))
    res["layer"] = F.relu(layer(fg.tensor([1.0, 0.0]))).data.tolist()  # [0.1, 0.3]
    print(f"layer of two neurons: weight rows [0.1, 0.2] and [0.3, 0.4], no bias, input [1, 0] -> "
          f"outputs {np.round(res['layer'], 4).tolist()}")
    print("notice: input [1, 0] selects each neuron's first weight (plus its bias); the layer does two neurons at once")
    return res


if __name__ == "__main__":
    main()
