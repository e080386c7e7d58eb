"""The built-in MLP's architecture written as a user's own module (``model.type: custom``): what
``bench.train.run``'s ``freestack_custom`` mode trains, to measure the custom-model path against
``FreestackNet`` itself (the same layers, initialised from the same seed)."""

from torch import nn


class CustomMLP(nn.Module):
    def __init__(self, inputs, hidden: list[int] = (128, 64), dropout: float = 0.1):
        super().__init__()
        dims = [inputs.groups["numeric"].size, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(dims[-1], inputs.n_outputs))
        self.body = nn.Sequential(*layers)

    def forward(self, batch):
        return self.body(batch["numeric"])
