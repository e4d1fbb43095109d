"""One shot, one update: the five steps of learning on y_hat = w*x + b, with w = 4 (the
weight), b = 5 (the bias), one input x = 10 and its target y = 50.

forward (45) -> loss (25) -> backward (dJ/dw = -100, dJ/db = -10) -> SGD step (w: 4 -> 4.1)
-> zero_grad. Run: python examples/01_one_update.py

It prints the prediction, the loss and both gradients, then the weight and the bias after one
step. Notice: both gradients are negative (the prediction 45 is below the target 50), so the
step raises w and b; w moves 10x more than b because its gradient is multiplied by x = 10.
"""
import fusegrad as fg


def main():
    w = fg.tensor(4.0, requires_grad=True)
    b = fg.tensor(5.0, requires_grad=True)
    x, y = fg.tensor(10.0), fg.tensor(50.0)
    opt = fg.optim.SGD([w, b], lr=0.001)

    y_hat = w * x + b                          # 1. forward pass
    loss = (y - y_hat) ** 2                    # 2. loss J = (y - y_hat)^2
    loss.backward()                            # 3. backward: dJ/dw = -2(y - y_hat)x
    grads = (w.grad.item(), b.grad.item())
    opt.step()                                 # 4. update: w <- w - lr * dJ/dw
    new_w, new_b = w.item(), b.item()
    opt.zero_grad(set_to_none=False)           # 5. zero the gradients
    zeroed = (w.grad.item(), b.grad.item())
    opt.zero_grad()                            # (set_to_none=True is the default, as in PyTorch)
    res = dict(y_hat=y_hat.item(), loss=loss.item(), dw=grads[0], db=grads[1], w=new_w, b=new_b,
               zeroed=zeroed, after_none=(w.grad, b.grad))
    print(f"prediction y_hat = w*x + b = {res['y_hat']:g} (target {y.item():g}), loss (y - y_hat)^2 = {res['loss']:g}")
    print(f"gradients: dJ/dw (weight) = {res['dw']:g}, dJ/db (bias) = {res['db']:g}")
    print(f"after one SGD step at lr 0.001: weight w = {new_w:.4f} (was 4), bias b = {new_b:.4f} (was 5); "
          f"gradients after zero_grad: {zeroed}")
    print("notice: negative gradients raise w and b; w moves 10x more than b because its gradient is "
          "multiplied by x = 10")
    return res


if __name__ == "__main__":
    main()
