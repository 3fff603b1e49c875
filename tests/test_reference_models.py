"""REFERENCE.md's model table: every row's MACs, LW-DNA FLOPs and params, reproduced exactly."""

import pytest

from widthtune.models.cost import CostModel

ROWS = [
    # spec, MACs, LW-DNA FLOPs (or None), params -- written exactly as REFERENCE.md prints them
    ("resnet_cifar:depth=56,shortcut=C,num_classes=10,resolution=32", "125.75M", "127.37M", "0.8558M"),
    ("vgg_cifar:depth=19,num_classes=10", "398.1M", None, "20.04M"),
    ("mobilenet_v2:stem=cifar,num_classes=10,resolution=32", "296.5M", None, "2.24M"),
    ("resnet:depth=18,resolution=224", "1.814G", None, "11.69M"),
    ("torchvision:resnet18", "1.814G", None, "11.69M"),
    ("resnet:depth=50,resolution=224", "4.089G", None, "25.557M"),
    ("torchvision:resnet50", "4.089G", None, "25.557M"),
    ("mobilenet_v2:stem=imagenet,num_classes=1000,resolution=224", "300.8M", None, "3.505M"),
    ("torchvision:mobilenet_v2", "300.8M", None, "3.505M"),
]


def printed(value: int, reference: str) -> str:
    """`value` written the way the reference figure is: same unit, same number of decimals."""
    number, unit = reference[:-1], reference[-1]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return f"{value / {'M': 1e6, 'G': 1e9}[unit]:.{decimals}f}{unit}"


@pytest.mark.parametrize(("spec", "macs", "lwdna", "params"), ROWS, ids=[r[0] for r in ROWS])
def test_reference_row_is_reproduced(spec, macs, lwdna, params):
    cost = CostModel.from_spec(spec).base()
    assert printed(cost.macs, macs) == macs
    assert cost.flops == 2 * cost.macs
    assert printed(cost.params, params) == params
    if lwdna is not None:
        assert printed(cost.lwdna, lwdna) == lwdna


def test_lwdna_convention_matches_the_paper_table():
    # LW-DNA Table 1 prints ResNet-56 as 0.1274 GFLOPs / 0.856M under its convention.
    cost = CostModel.from_spec("resnet_cifar:depth=56,shortcut=C").base()
    assert round(cost.lwdna / 1e9, 4) == 0.1274
    assert round(cost.params / 1e6, 3) == 0.856
    assert cost.lwdna > cost.macs
